//go:build unix

package capacity

import "syscall"

// noFile returns the soft RLIMIT_NOFILE, or 0 when it cannot be read.
func noFile() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return uint64(rl.Cur)
}
