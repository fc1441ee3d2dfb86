package main

import "syscall"

// childAttr puts a subprocess in its own process group, so that a Ctrl-C in
// the terminal reaches only the demo, which stops its children itself, and
// has the kernel SIGKILL it if the demo dies first, so no worker outlives it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
