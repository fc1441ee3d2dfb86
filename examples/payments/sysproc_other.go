//go:build !linux

package main

import "syscall"

// childAttr returns nil outside Linux: subprocesses share the demo's process
// group and are stopped by the demo on exit.
func childAttr() *syscall.SysProcAttr { return nil }
