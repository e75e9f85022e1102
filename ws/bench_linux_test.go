//go:build linux

package ws

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user + system) used so far by this
// process: in the end-to-end benchmarks, the client's and the server's.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
