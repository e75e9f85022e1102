package keys

import (
	"net/http"
	"net/netip"
	"testing"
)

var (
	sinkAddr netip.Addr
	sinkKey  Key
)

func benchResolve(b *testing.B, header, remote string, values ...string) {
	b.Helper()
	c, err := NewClientIP(testTrusted, header)
	if err != nil {
		b.Fatal(err)
	}
	r := newRequest(remote, header, values...)
	if header == "" {
		r = newRequest(remote, "X-Forwarded-For", values...)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a, err := c.Resolve(r)
			if err != nil {
				b.Fatal(err)
			}
			sinkAddr = a
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var a netip.Addr
			for pb.Next() {
				a, _ = c.Resolve(r)
			}
			_ = a
		})
	})
}

func BenchmarkResolveNoHeader(b *testing.B) {
	benchResolve(b, "", "10.0.0.1:34567", "198.51.100.7, 10.0.0.3, 10.0.0.2")
}

func BenchmarkResolveXForwardedFor3Hops(b *testing.B) {
	benchResolve(b, "X-Forwarded-For", "10.0.0.1:34567", "6.6.6.6, 198.51.100.7, 10.0.0.3, 10.0.0.2")
}

func BenchmarkResolveXForwardedForIPv6(b *testing.B) {
	benchResolve(b, "X-Forwarded-For", "[2001:db8:ffff::1]:443", "[2001:db8:1:2::7]:5555, 2001:db8:ffff::2")
}

func BenchmarkResolveForwarded3Hops(b *testing.B) {
	benchResolve(b, "Forwarded", "10.0.0.1:34567",
		`for=198.51.100.7;proto=https`, `for="10.0.0.3:8080";by=10.0.0.2`, `for=10.0.0.2`)
}

func BenchmarkResolveXRealIP(b *testing.B) {
	benchResolve(b, "X-Real-IP", "10.0.0.1:34567", "198.51.100.7")
}

func BenchmarkResolveUntrustedPeer(b *testing.B) {
	benchResolve(b, "X-Forwarded-For", "203.0.113.9:34567", "6.6.6.6")
}

func BenchmarkKeyIP(b *testing.B) {
	a4, a6 := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8:1:2::7")
	b.ReportAllocs()
	for b.Loop() {
		sinkKey = IP(a4)
		sinkKey = IP(a6)
	}
}

func BenchmarkKeySubnet(b *testing.B) {
	a4, a6 := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8:1:2::7")
	b.ReportAllocs()
	for b.Loop() {
		sinkKey = Subnet(a4, 24, 64)
		sinkKey = Subnet(a6, 24, 56)
	}
}

func BenchmarkKeySubnetParallel(b *testing.B) {
	a6 := netip.MustParseAddr("2001:db8:1:2::7")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var k Key
		for pb.Next() {
			k = Subnet(a6, 24, 64)
		}
		_ = k
	})
}

func BenchmarkHeaderValue(b *testing.B) {
	r := &http.Request{Header: http.Header{"X-Tenant": {"tenant-42"}}}
	b.ReportAllocs()
	for b.Loop() {
		sinkKey, _ = HeaderValue(r, "X-Tenant")
	}
}
