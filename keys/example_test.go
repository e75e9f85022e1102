package keys_test

import (
	"fmt"
	"net/http"
	"net/netip"

	"github.com/wslimit/wslimit/keys"
)

func ExampleClientIP() {
	c, err := keys.NewClientIP([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "X-Forwarded-For")
	if err != nil {
		panic(err)
	}
	r, _ := http.NewRequest("GET", "/ws", nil)
	r.RemoteAddr = "10.0.0.1:34567" // the load balancer
	// The client sent "6.6.6.6" itself; the edge proxy 10.0.0.2 appended
	// the client's real address, and the load balancer appended the edge's.
	r.Header.Set("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 10.0.0.2")
	a, _ := c.Resolve(r)
	fmt.Println(a)
	fmt.Println(keys.IP(a), keys.Subnet(a, 24, 64))

	// The same header from an untrusted peer counts for nothing.
	r.RemoteAddr = "203.0.113.9:40000"
	a, _ = c.Resolve(r)
	fmt.Println(a)
	// Output:
	// 198.51.100.7
	// 198.51.100.7 198.51.100.0/24
	// 203.0.113.9
}
