package concurrency_test

import (
	"fmt"
	"hash/maphash"

	"github.com/wslimit/wslimit/concurrency"
)

func Example() {
	seed := maphash.MakeSeed()
	c := concurrency.New(func(ip string) uint64 { return maphash.String(seed, ip) })

	const perIP = 2
	fmt.Println(c.Acquire("192.0.2.1", perIP)) // first connection
	fmt.Println(c.Acquire("192.0.2.1", perIP)) // second connection
	fmt.Println(c.Acquire("192.0.2.1", perIP)) // third: over the cap

	c.Release("192.0.2.1") // one connection closes
	fmt.Println(c.Acquire("192.0.2.1", perIP))

	c.Release("192.0.2.1")
	c.Release("192.0.2.1")
	fmt.Println(c.Len(), c.Release("192.0.2.1")) // no entry left; nothing to release
	// Output:
	// true
	// true
	// false
	// true
	// 0 false
}
