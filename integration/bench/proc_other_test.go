//go:build !linux

package bench

import (
	"errors"
	"time"
)

var errNoProc = errors.New("server processes are found through /proc, on Linux only")

func procCPU(int) (time.Duration, error) { return 0, errNoProc }
func loadAvg() string                    { return "unknown" }
