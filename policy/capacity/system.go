package capacity

import "runtime/debug"

// ReadSystem returns this process's descriptor limit (0 where
// RLIMIT_NOFILE does not exist) and Go memory limit.
func ReadSystem() System {
	return System{NoFile: noFile(), MemoryLimit: debug.SetMemoryLimit(-1)}
}
