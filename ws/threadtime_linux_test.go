//go:build linux

package ws

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadTime is the CPU time the calling OS thread has run (the caller
// locks its goroutine to the thread): unlike the wall clock it does not
// count the time the thread waits for a core.
func threadTime(b *testing.B) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}
