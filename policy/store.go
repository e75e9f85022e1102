package policy

import (
	"context"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
)

// Claim is what one rule asks of a Store for one handshake: a connection
// slot under a cap, a token from a bucket, or both, for one key, with the
// limits of the rule (or of the tier that applies).
type Claim struct {
	// Rule is the rule's name. Stores keep state by rule name, so a
	// reloaded policy keeps the counts of the rules it keeps.
	Rule string
	// Key is the key the rule counts by.
	Key keys.Key
	// Conns is the connection cap; 0 means the rule has no cap.
	Conns int
	// Limit is the handshake rate in tokens per second; 0 means the rule
	// has no rate limit.
	Limit rate.Limit
	// Burst is the bucket size (used only when Limit > 0).
	Burst int
	// MaxKeys bounds the number of token buckets the store keeps for the
	// rule (state.max_keys or the rule's max_keys); 0 means the store's
	// default.
	MaxKeys int
	// RefuseWhenFull makes a full bucket table refuse new keys
	// (state.on_full: refuse) instead of evicting a bucket not used lately.
	RefuseWhenFull bool
}

// Reason says why a claim was refused.
type Reason uint8

// Reasons for a refusal; the zero Reason is none (an admission).
const (
	ReasonConnections Reason = iota + 1 // the rule's connection cap is reached for this key
	ReasonRate                          // the rule's bucket has no token for this key
	ReasonTableFull                     // the rule's bucket table is full and refuses new keys
	ReasonMissing                       // the rule's key could not be taken from the request
	ReasonStoreError                    // the store failed and on_error is deny
	ReasonBanned                        // the key is banned by a penalty (Decision.Rule names it)
)

// String returns the reason as it appears in rejection bodies and logs.
func (r Reason) String() string {
	switch r {
	case ReasonConnections:
		return "connections"
	case ReasonRate:
		return "rate"
	case ReasonTableFull:
		return "table_full"
	case ReasonMissing:
		return "missing_identity"
	case ReasonStoreError:
		return "store_error"
	case ReasonBanned:
		return "banned"
	case reasonPressure:
		return "pressure"
	default:
		return "none"
	}
}

// Verdict is a Store's answer to Admit.
type Verdict struct {
	// OK is true when every claim was granted.
	OK bool
	// Index is the index in the claims of the first claim refused (when !OK).
	Index int
	// Reason says why that claim was refused.
	Reason Reason
	// RetryAfter is, for ReasonRate, the time until that bucket holds a token
	// again; for an admission with Empty set, the time until the first of
	// those buckets does. Zero when unknown.
	RetryAfter time.Duration
	// Full and Empty, on an admission, may mark the claims whose cap this
	// admission filled (bit i for claims[i], the first 64) and whose bucket
	// it emptied. A store without a check of its own (one round trip per
	// admission, as Redis) reports them so that the Limiter refuses the
	// key's next handshakes before verifying any token or asking the store
	// (refusals.go); zero means nothing is known.
	Full, Empty uint64
}

// Lease identifies the slots one admission holds in a Store. It is passed
// back to Release unchanged, with the same claims.
type Lease struct {
	// ID is assigned by the store, for its own use; stores that find their
	// slots by the claims (MemoryStore) leave it zero.
	ID uint64
}

// Store holds the limiting state: connection counters and token buckets.
//
// Admit evaluates all claims together and is all-or-nothing: when it refuses,
// it holds no slot and has spent no token for any claim (a cancelled token
// may be restored only partly under contention, which errs toward admitting
// fewer, never more). A refusal is a Verdict, not an error; an error means
// the store itself failed, and then nothing is held either.
//
// Release frees the connection slots of an admitted lease. The engine calls
// it exactly once per admitted lease, with the claims given to Admit.
//
// Implementations must be safe for concurrent use.
type Store interface {
	Admit(ctx context.Context, now time.Time, claims []Claim) (Lease, Verdict, error)
	Release(ctx context.Context, lease Lease, claims []Claim) error
	Close() error
}
