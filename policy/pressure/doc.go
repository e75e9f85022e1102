// Package pressure measures how close the process is to its limits and
// reports a pressure level that a policy's `pressure` section acts on.
//
// Three signals are sampled, each against its ceiling: live connections
// against a configured cap, open file descriptors against RLIMIT_NOFILE,
// and Go memory against the Go memory limit (GOMEMLIMIT). Each signal has
// an enter and a leave threshold (fractions of its ceiling): it turns on
// when its ratio reaches enter and off only when it falls below leave, so
// a value hovering at one threshold does not flap. The level is 1 while
// any configured signal is on, 0 otherwise; every change is logged.
//
// A Monitor samples on its own goroutine (Run, every interval), never on
// the admission path: a handshake reads the level with one atomic load.
// Tests inject readings (Options.Read) and step the monitor by hand
// (Monitor.Sample) instead of waiting for a ticker.
//
// What the level does is the policy's business (package policy reads
// Monitor.Level through policy.Options.Pressure): scale chosen rules'
// limits, refuse handshakes without a verified identity, and tighten
// penalties (Monitor.TightenPenalties, for a penalty engine to read).
//
// # Platforms
//
// Open descriptors are counted in /proc/self/fd (Linux: its size, one
// stat call, on Linux 6.2 and later; its entries before) or /dev/fd
// (macOS, the BSDs with fdescfs); RLIMIT_NOFILE exists on Unix systems.
// Where either is missing (Windows) the fds signal reads as unavailable
// and never turns on; the Monitor logs that once. The heap signal is
// unavailable without a memory limit.
//
// # Concurrency
//
// A Monitor is safe for concurrent use: Level, Status and
// TightenPenalties may be called while Run samples and SetConfig swaps
// the configuration.
package pressure
