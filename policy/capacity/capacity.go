// Package capacity derives connection caps from what the machine can
// hold: `connections: auto` on a global rule, or `global: auto` in a
// policy's listener section, becomes the process's file-descriptor limit
// (RLIMIT_NOFILE) minus a reserve, optionally bounded by a per-connection
// memory estimate against the Go memory limit (GOMEMLIMIT).
//
// The arithmetic is a pure function of a System snapshot (Compute), so it
// is tested with exact values; ReadSystem takes the snapshot from the
// running process.
//
// # Platforms
//
// On Unix systems the descriptor limit is getrlimit(RLIMIT_NOFILE)'s soft
// limit as this process sees it. Go programs raise their soft limit to the
// hard limit at start-up (Go 1.19 and later), so this is usually what
// `ulimit -Hn` or `prlimit --nofile` set. On Windows and other systems
// without RLIMIT_NOFILE an auto cap is an error at load.
package capacity

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Cap is a connection cap as written in a policy: a count, or Auto. Its
// zero value is "no cap" where the field it types says so.
type Cap int

// Auto is the Cap written `auto`: derived from the machine's capacity
// when the policy is compiled. It is the most negative int, so that any
// other negative value stays an error of its own.
const Auto Cap = math.MinInt

// UnmarshalText accepts an integer (a negative one is the policy's error
// to report) or "auto".
func (c *Cap) UnmarshalText(b []byte) error {
	if string(b) == "auto" {
		*c = Auto
		return nil
	}
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return fmt.Errorf("capacity: want an integer or auto, got %q", b)
	}
	*c = Cap(n)
	return nil
}

// MarshalJSON writes Auto as "auto" and a count as a number.
func (c Cap) MarshalJSON() ([]byte, error) {
	if c == Auto {
		return []byte(`"auto"`), nil
	}
	return json.Marshal(int(c))
}

// UnmarshalJSON accepts a number or "auto" (what MarshalJSON writes).
func (c *Cap) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		*c = Cap(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("capacity: want a number or \"auto\", got %s", b)
	}
	return c.UnmarshalText([]byte(s))
}

// String returns "auto" or the count.
func (c Cap) String() string {
	if c == Auto {
		return "auto"
	}
	return strconv.Itoa(int(c))
}

// DefaultReserve is the number of descriptors an auto cap leaves to the
// rest of the process (listening sockets, log files, Redis connections,
// the policy file watcher, DNS lookups) when Config.FDReserve is zero.
const DefaultReserve = 64

// Config is a policy's capacity section: how auto caps are computed.
type Config struct {
	// FDReserve is the number of descriptors kept out of auto caps
	// (default DefaultReserve).
	FDReserve int `yaml:"fd_reserve" json:"fd_reserve,omitempty"`
	// MemoryPerConnection is an estimate of the heap one connection holds,
	// in bytes (buffers, goroutine stacks, the application's state). When
	// set and a Go memory limit is in force, an auto cap is at most
	// GOMEMLIMIT / MemoryPerConnection. 0 means no memory bound.
	MemoryPerConnection int `yaml:"memory_per_connection" json:"memory_per_connection,omitempty"`
}

// System is what Compute derives caps from.
type System struct {
	// NoFile is the soft RLIMIT_NOFILE; 0 means unknown.
	NoFile uint64
	// MemoryLimit is the Go memory limit in bytes; 0 or math.MaxInt64
	// means none.
	MemoryLimit int64
}

// Result is a computed auto cap and what it came from, for logs and the
// inspector.
type Result struct {
	// Conns is the cap.
	Conns int `json:"connections"`
	// NoFile and Reserve are the descriptor limit and the reserve taken
	// from it.
	NoFile  uint64 `json:"nofile"`
	Reserve int    `json:"fd_reserve"`
	// MemoryLimit and MemoryPerConnection are set when the memory bound
	// applied (whether or not it was the smaller).
	MemoryLimit         int64 `json:"memory_limit,omitempty"`
	MemoryPerConnection int   `json:"memory_per_connection,omitempty"`
	// BoundBy is "nofile" or "memory": which bound gave Conns.
	BoundBy string `json:"bound_by"`
}

// ErrNoLimit is returned by Compute when the descriptor limit is unknown
// (a platform without RLIMIT_NOFILE).
var ErrNoLimit = errors.New("capacity: the file-descriptor limit (RLIMIT_NOFILE) is unknown on this platform")

// Compute returns the auto cap for sys under cfg:
//
//	min(NoFile - FDReserve, MemoryLimit / MemoryPerConnection)
//
// the memory term only when both are set. It is an error when the
// descriptor limit is unknown or leaves nothing after the reserve.
func Compute(cfg Config, sys System) (Result, error) {
	if cfg.FDReserve < 0 || cfg.MemoryPerConnection < 0 {
		return Result{}, errors.New("capacity: fd_reserve and memory_per_connection must not be negative")
	}
	if sys.NoFile == 0 {
		return Result{}, ErrNoLimit
	}
	r := Result{NoFile: sys.NoFile, Reserve: cfg.FDReserve, BoundBy: "nofile"}
	if r.Reserve == 0 {
		r.Reserve = DefaultReserve
	}
	if sys.NoFile <= uint64(r.Reserve) {
		return Result{}, fmt.Errorf("capacity: RLIMIT_NOFILE %d leaves no descriptor after the reserve of %d", sys.NoFile, r.Reserve)
	}
	fds := min(sys.NoFile-uint64(r.Reserve), math.MaxInt32)
	r.Conns = int(fds)
	if cfg.MemoryPerConnection > 0 && sys.MemoryLimit > 0 && sys.MemoryLimit < math.MaxInt64 {
		r.MemoryLimit, r.MemoryPerConnection = sys.MemoryLimit, cfg.MemoryPerConnection
		if m := sys.MemoryLimit / int64(cfg.MemoryPerConnection); m < int64(r.Conns) {
			r.Conns, r.BoundBy = max(1, int(m)), "memory"
		}
	}
	return r, nil
}
