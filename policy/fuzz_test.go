package policy

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse: any document either loads or fails with a located *Error;
// nothing panics, and a policy that loads has at least one rule.
func FuzzParse(f *testing.F) {
	f.Add([]byte(goodPolicy))
	f.Add([]byte("version: 1\nrules:\n  - {name: a, key: ip, connections: 1}\n"))
	f.Add([]byte("version: 1\nrules: [\n"))
	f.Add([]byte("version: 1\nrules:\n  - &a {name: a, key: ip, connections: 1}\n  - *a\n"))
	f.Add([]byte("version: 1\nrules:\n  - {name: s, key: subnet, ipv6_prefix: 56, rate: 3/10s, burst: 4}\nstate: {on_full: refuse, max_keys: 10}\n"))
	f.Add([]byte("version: 1\ncapacity: {fd_reserve: 8, memory_per_connection: 4096}\nrules:\n  - {name: g, key: global, connections: auto}\nlistener: {global: auto}\npressure: {interval: 50ms, fds: {enter: 0.9, leave: 0.5}, heap: {}, scale: {rules: [g], factor: 0.25}}\n"))
	f.Add([]byte("version: !!str 1\n"))
	f.Add([]byte("? [a]\n: b\n"))
	f.Add([]byte("version: 1\nrules:\n\t- {name: a, key: ip, connections: 1}\n"))
	f.Add([]byte("version: 1\nrules:\n  - name: a\n    key: ip\n      connections: 1\n"))
	f.Add([]byte("rules:\n  - {name: a, key: ip, rate: x, conections: 1}\nstate: {redis: {refresh_interval: 1m}}\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		p, err := Parse(doc, "fuzz.yaml")
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error without location: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(p.Rules()) == 0 {
			t.Fatal("a policy without rules loaded")
		}
	})
}
