package main

import (
	"fmt"
	"io"
	"log/slog"
)

// newLogger returns a slog logger on w in the given format ("text" or
// "json"). The demo runs its subprocesses with json and counts the lines that
// carry an "event" attribute.
func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil)), nil
	}
	return nil, fmt.Errorf("%w: -log-format must be text or json, got %q", errUsage, format)
}
