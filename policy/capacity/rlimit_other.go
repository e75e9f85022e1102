//go:build !unix

package capacity

// noFile returns 0: this platform has no RLIMIT_NOFILE.
func noFile() uint64 { return 0 }
