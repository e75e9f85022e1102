package identity

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// cacheEntry remembers one verified token. It is valid while
// notBefore <= now < deadline, which is exactly the window in which the
// token itself verifies (deadline = exp + leeway, notBefore = nbf - leeway).
type cacheEntry struct {
	id        Identity // Source unset; claims shared read-only
	deadline  time.Time
	notBefore time.Time // zero when the token has no nbf
}

func (e *cacheEntry) validAt(now time.Time) bool {
	return now.Before(e.deadline) && !now.Before(e.notBefore)
}

// tokenCache is a bounded LRU of verified tokens keyed by the SHA-256 of the
// token; the token itself is never stored. It is split into shards, each a
// simplelru.LRU behind its own mutex, so that concurrent handshakes rarely
// contend.
type tokenCache struct {
	shards []cacheShard
	mask   uint64
}

type cacheShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[[sha256.Size]byte, cacheEntry]
	_   [40]byte // keep neighbouring shards' mutexes off one cache line
}

// shardedAbove is the size from which the cache is split into 16 shards.
const shardedAbove = 1024

func newTokenCache(size int) *tokenCache {
	n := 1
	if size >= shardedAbove {
		n = 16
	}
	c := &tokenCache{shards: make([]cacheShard, n), mask: uint64(n - 1)}
	for i := range c.shards {
		// Split size exactly: the shards hold at most size entries in all.
		part := size / n
		if i < size%n {
			part++
		}
		// part >= 1 here, the only case NewLRU refuses.
		c.shards[i].lru, _ = simplelru.NewLRU[[sha256.Size]byte, cacheEntry](part, nil)
	}
	return c
}

func (c *tokenCache) shard(sum *[sha256.Size]byte) *cacheShard {
	return &c.shards[binary.LittleEndian.Uint64(sum[:8])&c.mask]
}

// get returns the identity remembered for sum if it is still valid at now.
// An entry found outside its window is dropped.
func (c *tokenCache) get(sum [sha256.Size]byte, now time.Time) (Identity, bool) {
	s := c.shard(&sum)
	s.mu.Lock()
	e, ok := s.lru.Get(sum)
	if ok && !e.validAt(now) {
		s.lru.Remove(sum)
		ok = false
	}
	s.mu.Unlock()
	if !ok {
		return Identity{}, false
	}
	return e.id, true
}

// add remembers e under sum, evicting the least recently used entry of the
// shard when it is full.
func (c *tokenCache) add(sum [sha256.Size]byte, e cacheEntry) {
	s := c.shard(&sum)
	s.mu.Lock()
	s.lru.Add(sum, e)
	s.mu.Unlock()
}

// len returns the number of entries, for tests.
func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}
