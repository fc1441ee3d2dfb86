package main

import (
	"io"
	"os"
	"strconv"

	"golang.org/x/term"
)

// defaultWidth is the output width when stdout is not a terminal and
// COLUMNS is unset, in columns.
const defaultWidth = 160

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// outputWidth returns the width of w when it is a terminal, else $COLUMNS,
// else defaultWidth.
func outputWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			return cols
		}
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return defaultWidth
}
