package buckets_test

import (
	"fmt"
	"time"

	"github.com/wslimit/wslimit/buckets"
)

func Example() {
	t := buckets.New[string](buckets.Options{MaxKeys: 10_000})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

	// Two handshakes per second, bursts of two.
	for range 3 {
		_, r := t.Reserve("192.0.2.1", t0, 2, 2)
		fmt.Println(r.OK, r.RetryAfter)
	}

	// A token taken for a handshake that another rule then refused goes
	// back.
	res, _ := t.Reserve("192.0.2.1", t0.Add(time.Second), 2, 2)
	res.Cancel(t0.Add(time.Second))
	tokens, _ := t.Tokens("192.0.2.1", t0.Add(time.Second))
	fmt.Println(tokens)
	// Output:
	// true 0s
	// true 0s
	// false 500ms
	// 2
}
