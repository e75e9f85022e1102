package prom

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy/messages"
)

func TestMessagesCollector(t *testing.T) {
	l, err := messages.Compile(messages.Config{MaxSize: 100, Limits: []messages.LimitConfig{
		{Name: "conn", Rate: "1/m", Burst: 1},
		{Name: "user", Per: "rule:per-user", Rate: "1/m", Burst: 2, Action: "close"},
	}}, []string{"per-user"}, false)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	tb := messages.NewTable(l, messages.TableOptions{Now: func() time.Time { return now }})
	m := tb.Open(netip.MustParseAddr("192.0.2.1"), func(string) (keys.Key, bool) {
		return keys.Key{Kind: keys.KindString, Str: "alice"}, true
	})
	defer m.Close()
	m.Message(10) // within both
	m.Message(10) // conn: throttle; user: its 2nd token
	m.Message(10) // conn: throttle; user: close
	m.Oversize(101)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewMessagesCollector(tb, Options{}))
	want := `
# HELP wslimit_message_bytes_limited_total Bytes carried by the message charges over a messages limit, by limit, reason and action.
# TYPE wslimit_message_bytes_limited_total counter
wslimit_message_bytes_limited_total{action="close",limit="max_size",reason="size"} 101
wslimit_message_bytes_limited_total{action="close",limit="user",reason="messages"} 10
wslimit_message_bytes_limited_total{action="throttle",limit="conn",reason="messages"} 20
# HELP wslimit_message_closes_total Connections closed by a messages limit (1008) or max_size (1009), by limit and reason.
# TYPE wslimit_message_closes_total counter
wslimit_message_closes_total{limit="max_size",reason="size"} 1
wslimit_message_closes_total{limit="user",reason="messages"} 1
# HELP wslimit_message_keys Per-key message limit entries (keys with a live connection on this instance).
# TYPE wslimit_message_keys gauge
wslimit_message_keys 1
# HELP wslimit_messages_limited_total Message charges over a messages limit (throttled, closed, or in dry run would have been), by limit, reason and action.
# TYPE wslimit_messages_limited_total counter
wslimit_messages_limited_total{action="close",limit="max_size",reason="size"} 1
wslimit_messages_limited_total{action="close",limit="user",reason="messages"} 1
wslimit_messages_limited_total{action="throttle",limit="conn",reason="messages"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
