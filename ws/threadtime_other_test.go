//go:build !linux

package ws

import (
	"testing"
	"time"
)

var threadBase = time.Now()

// threadTime is the wall time elsewhere (no per-thread CPU clock here).
func threadTime(*testing.B) time.Duration { return time.Since(threadBase) }
