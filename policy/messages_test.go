package policy

import (
	"strings"
	"testing"
)

// TestMessagesSection checks that the messages section decodes, that its
// errors carry file:line:col, and that unknown fields are refused.
func TestMessagesSection(t *testing.T) {
	const good = `version: 1
rules:
  - name: per-user
    key: header:X-User
    connections: 5
messages:
  max_size: 65536
  action: throttle
  limits:
    - name: conn
      rate: 50/s
      burst: 100
      bytes: 256KiB/s
    - name: user
      per: rule:per-user
      rate: 100/s
      action: close
`
	p, err := Parse([]byte(good), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if m := p.Config().Messages; m == nil || len(m.Limits) != 2 || m.Limits[1].Per != "rule:per-user" {
		t.Fatalf("decoded messages: got %+v", m)
	}
	cases := []struct{ name, doc, want string }{
		{"bad rate", strings.Replace(good, "rate: 50/s", "rate: 50", 1), "p.yaml:11:13: messages.limits[0].rate: rate \"50\""},
		{"unknown rule", strings.Replace(good, "rule:per-user", "rule:per-usr", 1), "p.yaml:15:12: messages.limits[1].per: no rule named \"per-usr\""},
		{"unknown field", strings.Replace(good, "max_size:", "max_bytes:", 1), "p.yaml:7:3: messages.max_bytes: unknown field \"max_bytes\""},
		{"bad action", strings.Replace(good, "action: throttle", "action: drop", 1), "p.yaml:8:11: messages.action: must be throttle or close"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "p.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
