package redisstore

import (
	"sync"
	"time"
)

// breakerState is where the circuit breaker stands.
type breakerState uint8

const (
	closed   breakerState = iota // calls go to Redis
	open                         // calls skip Redis until the cooldown ends
	halfOpen                     // one probe call is trying Redis
)

// breaker is a consecutive-failure circuit breaker. After threshold failed
// calls in a row it opens: allow refuses every call until cooldown has
// passed, then lets exactly one probe through. The probe's success closes
// the breaker; its failure opens it for another cooldown.
//
// The core methods take the time as a parameter; breaker is safe for
// concurrent use.
type breaker struct {
	threshold int
	cooldown  time.Duration

	mu    sync.Mutex
	state breakerState
	fails int       // consecutive failures while closed
	until time.Time // end of the cooldown while open
}

// allow reports whether a call may go to Redis at now. When it returns true
// the caller must report the outcome with success, failure or abandon.
func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case closed:
		return true
	case open:
		if now.Before(b.until) {
			return false
		}
		b.state = halfOpen // this caller is the probe
		return true
	default: // a probe is already out
		return false
	}
}

// success records a call that Redis answered. It reports whether the
// breaker was not closed before (it has just recovered).
func (b *breaker) success() (recovered bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	recovered = b.state != closed
	b.state, b.fails = closed, 0
	return recovered
}

// failure records a failed call at now. It reports whether this failure
// opened the breaker (from closed or from a failed probe).
func (b *breaker) failure(now time.Time) (opened bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case closed:
		b.fails++
		if b.fails < b.threshold {
			return false
		}
		b.state, b.until = open, now.Add(b.cooldown)
		return true
	case halfOpen:
		b.state, b.until = open, now.Add(b.cooldown)
		return true
	default:
		// A call let through before the breaker opened failed late.
		return false
	}
}

// trip opens the breaker at now whatever the count: a failure confirmed
// by a second call. It reports whether the breaker was closed or probing.
func (b *breaker) trip(now time.Time) (opened bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == open {
		return false
	}
	b.state, b.until, b.fails = open, now.Add(b.cooldown), 0
	return true
}

// abandon records a call that ended without telling whether Redis works
// (the caller's context was cancelled). A probe hands its turn on: the
// next call probes at once.
func (b *breaker) abandon(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == halfOpen {
		b.state, b.until = open, now
	}
}

// isOpen reports whether calls currently skip Redis.
func (b *breaker) isOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state != closed
}
