package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

const goodPolicy = `version: 1
client_ip:
  trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]
  header: X-Forwarded-For
exempt: [10.1.0.0/16]
rules:
  - name: per-ip
    key: ip
    connections: 20
    rate: 10/s
    burst: 20
  - name: per-subnet
    key: subnet
    ipv4_prefix: 24
    ipv6_prefix: 56
    connections: 200
  - name: per-tenant
    key: header:X-Tenant
    rate: 100/m
  - name: everyone
    key: global
    connections: 10000
state:
  max_keys: 5000
  on_full: refuse
reject: {mode: close, cap_retry_after: 3s}
mode: dry_run
`

func TestParseGoodPolicy(t *testing.T) {
	p, err := Parse([]byte(goodPolicy), "good.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	rules := p.rules
	if got, want := len(rules), 4; got != want {
		t.Fatalf("rules = %d, want %d", got, want)
	}
	ip := rules[0]
	if ip.kind != keyIP || ip.claim.Conns != 20 || ip.claim.Limit != rate.Limit(10) || ip.claim.Burst != 20 {
		t.Errorf("per-ip = %+v", ip)
	}
	if ip.claim.MaxKeys != 5000 || !ip.claim.RefuseWhenFull {
		t.Errorf("per-ip state: MaxKeys %d Refuse %v, want 5000 true", ip.claim.MaxKeys, ip.claim.RefuseWhenFull)
	}
	sub := rules[1]
	if sub.kind != keySubnet || sub.v4 != 24 || sub.v6 != 56 {
		t.Errorf("per-subnet = %+v", sub)
	}
	tenant := rules[2]
	if tenant.kind != keyHeader || tenant.param != "X-Tenant" {
		t.Errorf("per-tenant = %+v", tenant)
	}
	if got, want := float64(tenant.claim.Limit), 100.0/60; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("per-tenant limit = %v, want %v", got, want)
	}
	if tenant.claim.Burst != 2 {
		t.Errorf("default burst = %d, want ceil(rate per second) floored at 1 = 2", tenant.claim.Burst)
	}
	if rj := p.Reject(); !p.dryRun || rj.Mode != "close" || rj.CapRetryAfter != 3*time.Second {
		t.Errorf("dry %v mode %q cap retry %v", p.dryRun, rj.Mode, rj.CapRetryAfter)
	}
}

func TestParseDefaults(t *testing.T) {
	p, err := Parse([]byte("version: 1\nrules:\n  - {name: s, key: subnet, connections: 1}\n"), "d.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := p.rules[0]
	if r.v4 != defaultIPv4Prefix || r.v6 != defaultIPv6Prefix || r.claim.MaxKeys != defaultMaxKeys || r.claim.RefuseWhenFull {
		t.Errorf("defaults not applied: %+v", r)
	}
	if rj := p.Reject(); p.dryRun || rj.Mode != "status" || rj.CapRetryAfter != defaultCapRetryAfter {
		t.Errorf("policy defaults: dry %v mode %q retry %v", p.dryRun, rj.Mode, rj.CapRetryAfter)
	}
}

// TestParseErrors guards the promise that every malformed policy names the
// file, line and column of the problem and says what is wrong.
func TestParseErrors(t *testing.T) {
	const head = "version: 1\nrules:\n"
	tests := []struct {
		name string
		doc  string
		want string // "line:col: fragment"
	}{
		{"unknown top-level field", "version: 1\nrulez: []\n", `2:1: rulez: unknown field "rulez"`},
		{"unknown rule field", head + "  - name: a\n    key: ip\n    conections: 5\n", `5:5: rules[0].conections: unknown field "conections"`},
		{"bad CIDR", "version: 1\nexempt: [10.0.0.0/33]\nrules:\n  - {name: a, key: ip, connections: 1}\n", `2:10: exempt[0]: "10.0.0.0/33" is not a CIDR block`},
		{"host bits in CIDR", "version: 1\nclient_ip:\n  trusted_proxies:\n    - 10.0.0.1/8\nrules:\n  - {name: a, key: ip, connections: 1}\n", `4:7: client_ip.trusted_proxies[0]: "10.0.0.1/8" has host bits set`},
		{"bad rate unit", head + "  - name: a\n    key: ip\n    rate: 10/x\n", `5:11: rules[0].rate: rate "10/x": period must be`},
		{"zero rate", head + "  - name: a\n    key: ip\n    rate: 0/s\n", `5:11: rules[0].rate: rate "0/s": count must be a positive number`},
		{"negative cap", head + "  - name: a\n    key: ip\n    connections: -3\n", `5:18: rules[0].connections: must not be negative (got -3)`},
		{"duplicate rule name", head + "  - {name: a, key: ip, connections: 1}\n  - name: a\n    key: global\n    connections: 9\n", `4:11: rules[1].name: duplicate rule name "a" (also rules[0])`},
		{"unknown key kind", head + "  - name: a\n    key: mac\n    connections: 1\n", `4:10: rules[0].key: unknown key "mac"`},
		{"rule limits nothing", head + "  - name: a\n    key: ip\n", `3:5: rules[0]: rule "a" limits nothing`},
		{"string for int", head + "  - name: a\n    key: ip\n    connections: many\n", `5:18: rules[0].connections: expected an integer or auto, got string "many"`},
		{"burst without rate", head + "  - name: a\n    key: ip\n    connections: 1\n    burst: 4\n", `6:12: rules[0].burst: burst needs a rate`},
		{"prefix out of range", head + "  - name: a\n    key: subnet\n    ipv6_prefix: 129\n    connections: 1\n", `5:18: rules[0].ipv6_prefix: must be between 1 and 128`},
		{"prefix on ip key", head + "  - name: a\n    key: ip\n    ipv4_prefix: 16\n    connections: 1\n", `5:18: rules[0].ipv4_prefix: prefix lengths apply only to key: subnet`},
		{"bad on_missing", head + "  - name: a\n    key: header:X-A\n    on_missing: maybe\n    connections: 1\n", `5:17: rules[0].on_missing: must be skip or reject`},
		{"bad mode", "version: 1\nmode: enforcing\nrules:\n  - {name: a, key: ip, connections: 1}\n", `2:7: mode: must be enforce or dry_run`},
		{"bad duration", "version: 1\nreject:\n  cap_retry_after: soon\nrules:\n  - {name: a, key: ip, connections: 1}\n", `3:20: reject.cap_retry_after: "soon" is not a duration`},
		{"wrong version", "version: 2\nrules:\n  - {name: a, key: ip, connections: 1}\n", `1:10: version: must be 1 (got 2)`},
		{"no rules", "version: 1\n", `1:1: rules: a policy needs at least one rule`},
		{"rules not a list", "version: 1\nrules: {name: a}\n", `2:8: rules: expected a list, got a mapping`},
		{"syntax error", "version: 1\nrules: [\n", `YAML syntax`},
		{"duplicate field", "version: 1\nversion: 1\nrules:\n  - {name: a, key: ip, connections: 1}\n", `2:1: YAML syntax: mapping key "version" already defined`},
		{"header without trusted proxies", "version: 1\nclient_ip: {header: X-Real-IP}\nrules:\n  - {name: a, key: ip, connections: 1}\n", `2:21: client_ip.header: a forwarding header needs client_ip.trusted_proxies`},
		{"bad store", "version: 1\nstate: {store: etcd}\nrules:\n  - {name: a, key: ip, connections: 1}\n", `2:16: state.store: must be memory or redis`},
		{"bad rule name", head + "  - name: \"a b\"\n    key: ip\n    connections: 1\n", `3:11: rules[0].name: must be 1-64 characters`},
		{"empty document", "", `1:1: empty policy`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), "p.yaml")
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tt.want)
			}
			got := err.Error()
			if !strings.Contains(got, tt.want) {
				t.Errorf("error = %q\nwant it to contain %q", got, tt.want)
			}
			if !strings.HasPrefix(got, "p.yaml:") {
				t.Errorf("error %q does not start with the file name", got)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Line == 0 || pe.Column == 0 {
				t.Errorf("error is not a located *Error: %#v", err)
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	doc := "version: 1\nrules:\n  - {name: a, key: ip, connections: -1}\n  - {name: b, key: ip, rate: fast}\n"
	_, err := Parse([]byte(doc), "p.yaml")
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"p.yaml:3:", "connections: must not be negative", "p.yaml:4:", `rate "fast"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(goodPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(path); err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.yaml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want os.ErrNotExist", err)
	}
}

func TestNewFromGo(t *testing.T) {
	p, err := New(Config{Version: 1, Rules: []RuleConfig{{Name: "per-ip", Key: "ip", Connections: 3, Rate: "5/s"}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Rules()[0]; r.Conns != 3 || r.Limit != 5 || r.Burst != 5 {
		t.Errorf("rule = %+v", r)
	}
	_, err = New(Config{Version: 1, Rules: []RuleConfig{{Name: "x", Key: "ip", Connections: -1}}})
	if err == nil || !strings.HasPrefix(err.Error(), "policy: rules[0].connections: must not be negative") {
		t.Errorf("Go-built error = %v", err)
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want rate.Limit
	}{
		{"10/s", 10}, {"60/m", 1}, {"3600/h", 1}, {"3/10s", 0.3}, {"0.5/s", 0.5}, {" 2 / s ", 2},
	}
	for _, tt := range tests {
		got, err := parseRate(tt.in)
		if err != nil || got < tt.want-1e-9 || got > tt.want+1e-9 {
			t.Errorf("parseRate(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "10", "10/", "/s", "-1/s", "x/s", "10/0s", "NaN/s", "Inf/s", "1/-1s"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) succeeded", bad)
		}
	}
}

func TestIdentityPolicyErrors(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"alg none", "version: 1\nidentity:\n  jwt:\n    algorithms: [none]\n    secret_env: X\nrules:\n  - {name: u, key: jwt, connections: 1}\n", `4:18: identity.jwt.algorithms[0]: identity: algorithms[0]: "none" is never allowed`},
		{"jwt key without identity", "version: 1\nrules:\n  - name: u\n    key: jwt\n    connections: 1\n", `4:10: rules[0].key: key "jwt" needs identity.jwt`},
		{"tiers without jwt", "version: 1\nrules:\n  - name: u\n    key: ip\n    connections: 1\n    tiers: {claim: plan, values: {pro: {connections: 5}}}\n", `6:5: rules[0].tiers: tiers need identity.jwt`},
		{"cookie without name", "version: 1\nrules:\n  - {name: s, key: cookie, connections: 1}\n", `key cookie needs a name`},
		{"unknown jwt field", "version: 1\nidentity:\n  jwt:\n    algorithm: [RS256]\nrules:\n  - {name: u, key: ip, connections: 1}\n", `4:5: identity.jwt.algorithm: unknown field "algorithm"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), "p.yaml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// TestParseErrorPositions guards the exact position and wording of every
// problem of a file: each at its own field, all of them at once, sorted by
// position, including the state.redis settings that a store would
// otherwise refuse only when it is built, without a position.
func TestParseErrorPositions(t *testing.T) {
	const rule = "rules:\n  - {name: a, key: ip, connections: 1}\n"
	t.Setenv("WSLIMIT_TEST_SECRET", strings.Repeat("s", 32))
	const redis = "version: 1\n" + rule + "state:\n  store: redis\n  redis:\n    addrs: [127.0.0.1:6379]\n"
	tests := []struct {
		name string
		doc  string
		want []string // every line of the error, in order
	}{
		{"tab in indentation", "version: 1\nrules:\n\t- {name: a, key: ip, connections: 1}\n",
			[]string{"p.yaml:3:1: YAML syntax: a tab in the indentation: indent with spaces"}},
		{"tab after spaces", "version: 1\nrules:\n  - name: a\n  \tkey: ip\n",
			[]string{"p.yaml:4:3: YAML syntax: a tab in the indentation: indent with spaces"}},
		{"missing version", rule,
			[]string{"p.yaml:1:1: version: required: start the policy with version: 1"}},
		{"line indented too deep", "version: 1\nrules:\n  - name: a\n    key: ip\n      connections: 1\n",
			[]string{"p.yaml:5:7: YAML syntax: this line is indented deeper than the key above it; keys of one mapping start in the same column"}},
		{"line indented too little", "version: 1\nrules:\n  - name: a\n    key: ip\n   connections: 1\n",
			[]string{"p.yaml:5:4: YAML syntax: value is not allowed in this context (is the line indented less than the keys above it?)"}},
		{"ipv6_prefix on an ip rule", "version: 1\nrules:\n  - name: a\n    key: ip\n    ipv6_prefix: 56\n    connections: 1\n",
			[]string{`p.yaml:5:18: rules[0].ipv6_prefix: prefix lengths apply only to key: subnet (this rule's key is "ip")`}},
		{"both prefixes on a global rule", "version: 1\nrules:\n  - name: a\n    key: global\n    ipv4_prefix: 16\n    ipv6_prefix: 48\n    connections: 1\n",
			[]string{
				`p.yaml:5:18: rules[0].ipv4_prefix: prefix lengths apply only to key: subnet (this rule's key is "global")`,
				`p.yaml:6:18: rules[0].ipv6_prefix: prefix lengths apply only to key: subnet (this rule's key is "global")`,
			}},
		{"refresh_interval not below lease_ttl", redis + "    lease_ttl: 3s\n    refresh_interval: 3s\n",
			[]string{"p.yaml:9:23: state.redis.refresh_interval: must be below lease_ttl 3s (got 3s): a lease must be renewed before it expires"}},
		{"refresh_interval not below the default lease_ttl", redis + "    refresh_interval: 1m\n",
			[]string{"p.yaml:8:23: state.redis.refresh_interval: must be below the default lease_ttl 30s (got 1m0s): a lease must be renewed before it expires"}},
		{"negative breaker settings", redis + "    breaker_failures: -1\n    breaker_cooldown: -2s\n    timeout: -1ms\n",
			[]string{
				"p.yaml:8:23: state.redis.breaker_failures: must not be negative",
				"p.yaml:9:23: state.redis.breaker_cooldown: must not be negative",
				"p.yaml:10:14: state.redis.timeout: must not be negative",
			}},
		{"lease_ttl under 1ms", redis + "    lease_ttl: 500us\n",
			[]string{"p.yaml:8:16: state.redis.lease_ttl: must be at least 1ms (got 500µs)"}},
		{"redis without store redis", "version: 1\n" + rule + "state:\n  redis:\n    addrs: [127.0.0.1:6379]\n",
			[]string{"p.yaml:5:3: state.redis: has no effect without state.store: redis"}},
		{"max_closing in status mode", "version: 1\n" + rule + "reject:\n  max_closing_per_ip: 8\n",
			[]string{"p.yaml:5:23: reject.max_closing_per_ip: has no effect with reject.mode status: it bounds the refusals being closed in close and auto modes"}},
		{"max_keys without a rate", "version: 1\nrules:\n  - name: a\n    key: ip\n    connections: 1\n    max_keys: 10\n",
			[]string{"p.yaml:6:15: rules[0].max_keys: has no effect without a rate: max_keys bounds the rule's token buckets"}},
		{"jwt secret at its own line", "version: 1\nidentity:\n  jwt:\n    algorithms: [HS256]\n    secret_env: WSLIMIT_TEST_UNSET_SECRET\nrules:\n  - {name: u, key: jwt, connections: 1}\n",
			[]string{"p.yaml:5:17: identity.jwt.secret_env: identity: secret_env WSLIMIT_TEST_UNSET_SECRET: environment variable is not set or empty"}},
		{"jwt leeway at its own line", "version: 1\nidentity:\n  jwt:\n    algorithms: [HS256]\n    secret_env: WSLIMIT_TEST_SECRET\n    leeway: -1s\nrules:\n  - {name: u, key: jwt, connections: 1}\n",
			[]string{"p.yaml:6:13: identity.jwt.leeway: identity: leeway -1s must not be negative"}},
		{"jwt source at its own line", "version: 1\nidentity:\n  jwt:\n    algorithms: [HS256]\n    secret_env: WSLIMIT_TEST_SECRET\n    from: [header:Authorization, carrier-pigeon]\nrules:\n  - {name: u, key: jwt, connections: 1}\n",
			[]string{`p.yaml:6:34: identity.jwt.from[1]: identity: from[1]: unknown source "carrier-pigeon": want header:NAME, query:NAME, cookie:NAME or subprotocol[:PREFIX]`}},
		{"unknown field hides nothing, sorted", "rules:\n  - name: a\n    key: ip\n    rate: fast\n    conections: 5\nmode: enforcing\nsate: {}\n",
			[]string{
				`p.yaml:1:1: version: required: start the policy with version: 1`,
				`p.yaml:4:11: rules[0].rate: rate "fast": want COUNT/PERIOD such as 10/s, 100/m, 5/h or 3/10s`,
				`p.yaml:5:5: rules[0].conections: unknown field "conections" (known: burst, connections, ipv4_prefix, ipv6_prefix, key, max_keys, name, on_missing, rate, tiers)`,
				`p.yaml:6:7: mode: must be enforce or dry_run (got "enforcing")`,
				`p.yaml:7:1: sate: unknown field "sate" (known: capacity, client_ip, exempt, identity, listener, messages, mode, penalties, pressure, reject, rules, state, version)`,
			}},
		{"a misspelt only limit is one problem", "version: 1\nrules:\n  - name: a\n    key: ip\n    conections: 5\n",
			[]string{`p.yaml:5:5: rules[0].conections: unknown field "conections" (known: burst, connections, ipv4_prefix, ipv6_prefix, key, max_keys, name, on_missing, rate, tiers)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), "p.yaml")
			if err == nil {
				t.Fatalf("Parse succeeded, want %q", tt.want)
			}
			if got, want := err.Error(), strings.Join(tt.want, "\n"); got != want {
				t.Errorf("error =\n%s\nwant\n%s", got, want)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Line == 0 {
				t.Errorf("error is not a located *Error: %#v", err)
			}
		})
	}
}

// TestFlowPairIsOneValue: k:v without a space after the colon is one
// plain scalar in YAML; the parser makes a mapping of it in a flow
// sequence inside a flow mapping, and the decoder reads it back as the
// string. With a space it is a mapping, and an error.
func TestFlowPairIsOneValue(t *testing.T) {
	t.Setenv("WSLIMIT_TEST_SECRET", "test secret: 32 bytes or more, for HS256")
	const doc = "version: 1\nidentity:\n  jwt: {from: [header:Authorization, query:token], algorithms: [HS256], secret_env: WSLIMIT_TEST_SECRET}\n" +
		"rules:\n  - {name: a, key: jwt, connections: 1}\n"
	p, err := Parse([]byte(doc), "flow.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Config().Identity.JWT.From; !slices.Equal(got, []string{"header:Authorization", "query:token"}) {
		t.Errorf("from = %q", got)
	}
	spaced := strings.Replace(doc, "[header:Authorization,", "[header: Authorization,", 1)
	if _, err := Parse([]byte(spaced), "flow.yaml"); err == nil || !strings.Contains(err.Error(), "expected a single value, got a mapping") {
		t.Errorf("spaced pair: err = %v, want a mapping refused", err)
	}
}
