package messages

import (
	"net/netip"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// BenchmarkCharge is the meter's share of a message: one per-connection
// limit (messages and bytes), and with a per-key limit (a lock).
func BenchmarkCharge(b *testing.B) {
	for _, tc := range []struct {
		name   string
		limits []LimitConfig
	}{
		{"conn", []LimitConfig{{Name: "conn", Rate: "1000000000/s", Bytes: "64GiB/s"}}},
		{"conn+key", []LimitConfig{{Name: "conn", Rate: "1000000000/s", Bytes: "64GiB/s"}, {Name: "key", Per: "rule:per-ip", Rate: "1000000000/s"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			l, err := Compile(Config{MaxSize: 65536, Limits: tc.limits}, []string{"per-ip"}, false)
			if err != nil {
				b.Fatal(err)
			}
			tb := NewTable(l, TableOptions{})
			m := tb.Open(netip.MustParseAddr("192.0.2.1"), func(string) (keys.Key, bool) { return keys.Key{}, true })
			defer m.Close()
			b.ReportAllocs()
			for b.Loop() {
				if res := m.Charge(1, 16); res.Wait != 0 || res.Code != 0 {
					b.Fatal(res)
				}
			}
		})
	}
	b.Run("clock", func(b *testing.B) {
		base := time.Now()
		var s time.Duration
		for b.Loop() {
			s += time.Since(base)
		}
		_ = s
	})
}
