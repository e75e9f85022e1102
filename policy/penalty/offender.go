package penalty

import (
	"sync/atomic"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// Offender follows one admitted connection for the penalties that count
// its behaviour: a close within short_lived of admission, and message-limit
// violations. Package policy builds it at admission (Decision.Offender)
// and calls Closed on release. A nil *Offender is valid and does nothing.
// It is safe for concurrent use.
type Offender struct {
	at      time.Time
	watches []watch
	buf     [2]watch // the watches of up to two penalties, in the same allocation
	closed  atomic.Bool
}

type watch struct {
	t          *Table
	k          keys.Key
	shortLived time.Duration
	messages   bool
}

// Track adds t to o for the connection of key k admitted at at: counting a
// close within shortLived (0: not counted) and, when messages, the
// violations reported by Offend. A nil o starts a new Offender.
func (t *Table) Track(o *Offender, at time.Time, k keys.Key, shortLived time.Duration, messages bool) *Offender {
	if o == nil {
		o = &Offender{at: at}
		o.watches = o.buf[:0]
	}
	o.watches = append(o.watches, watch{t: t, k: k, shortLived: shortLived, messages: messages})
	return o
}

// Offend reports a message-limit violation (KindMessage) by the
// connection to every penalty that counts messages. Other kinds are
// ignored: they are counted by the limiter.
func (o *Offender) Offend(kind Kind) {
	if o == nil || kind != KindMessage {
		return
	}
	for _, w := range o.watches {
		if w.messages {
			w.t.Offend(w.k, kind, w.t.e.now())
		}
	}
}

// Closed reports that the connection closed; only the first call counts.
// A close within a penalty's short_lived of admission is an offence.
func (o *Offender) Closed() {
	if o == nil || !o.closed.CompareAndSwap(false, true) {
		return
	}
	for _, w := range o.watches {
		if w.shortLived <= 0 {
			continue
		}
		now := w.t.e.now()
		if now.Sub(o.at) < w.shortLived {
			w.t.Offend(w.k, KindShortLived, now)
		}
	}
}
