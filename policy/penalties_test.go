package policy

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/keys"

	"github.com/wslimit/wslimit/policy/penalty"
)

const penaltySecretEnv = "WSLIMIT_TEST_PENALTY_SECRET"
const penaltySecret = "penalty test secret: at least 32 bytes long"

const penaltyPolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    secret_env: WSLIMIT_TEST_PENALTY_SECRET
rules:
  - name: per-ip
    key: ip
    rate: 100/s
    burst: 100
  - name: per-user
    key: jwt.sub
    connections: 10
penalties:
  - name: spray
    key: ip
    offences: {invalid_identity: true}
    threshold: 3
    window: 1m
    ban: 10s
  - name: loop
    key: subnet
    offences: {short_lived: 2s, refused: ["per-user:connections"]}
    threshold: 3
    ban: 30s
    factor: 2
    max_ban: 1h
`

// countingStore counts the Admit calls that reach the store.
type countingStore struct {
	Store
	admits atomic.Int64
}

func (s *countingStore) Admit(ctx context.Context, now time.Time, c []Claim) (Lease, Verdict, error) {
	s.admits.Add(1)
	return s.Store.Admit(ctx, now, c)
}

func signed(t *testing.T, sub string, secret string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return "Bearer " + s
}

// TestBanRefusesBeforeTokenAndStore: a token sprayer is banned by address
// after 3 invalid tokens; then its handshakes are refused as banned with
// the ban's remaining time, without its token being verified and without a
// store call, while a neighbour in the same /24 is admitted.
func TestBanRefusesBeforeTokenAndStore(t *testing.T) {
	t.Setenv(penaltySecretEnv, penaltySecret)
	now := time.Unix(1_000_000, 0)
	st := &countingStore{Store: NewMemoryStore()}
	l := NewLimiter(mustParse(t, penaltyPolicy), Options{Store: st, Now: fixedClock(&now)})
	forged := signed(t, "mallory", "not the secret, but just as long as it")
	for i := range 3 {
		d := l.Admit(context.Background(), request("192.0.2.7:1", "Authorization", forged))
		if !d.Allowed || !d.InvalidToken {
			t.Fatalf("forged token %d: allowed %v invalid %v, want admitted without identity", i, d.Allowed, d.InvalidToken)
		}
		now = now.Add(3 * time.Second) // past loop's short_lived: only spray counts these
		d.Release()
	}
	before := st.admits.Load()
	d := l.Admit(context.Background(), request("192.0.2.7:1", "Authorization", forged))
	if d.Allowed || d.Reason != ReasonBanned || d.Rule != "spray" || d.RetryAfter != 7*time.Second {
		t.Fatalf("got allowed %v %s/%s retry %v, want banned by spray for 7s (10s from the third offence, 3s ago)", d.Allowed, d.Rule, d.Reason, d.RetryAfter)
	}
	if d.InvalidToken || st.admits.Load() != before {
		t.Fatalf("banned handshake: token verified %v, store calls %d, want neither", d.InvalidToken, st.admits.Load()-before)
	}
	ok := l.Admit(context.Background(), request("192.0.2.8:1", "Authorization", signed(t, "alice", penaltySecret)))
	if !ok.Allowed || ok.Identity != "alice" {
		t.Fatalf("neighbour: allowed %v identity %q (%s/%s invalid %v), want admitted as alice", ok.Allowed, ok.Identity, ok.Rule, ok.Reason, ok.InvalidToken)
	}
	ok.Release()
	now = now.Add(7 * time.Second)
	if d := l.Admit(context.Background(), request("192.0.2.7:1")); !d.Allowed {
		t.Fatalf("after the ban: refused %s/%s", d.Rule, d.Reason)
	}
}

// TestReconnectLoopEscalates: connections closing within short_lived earn
// a subnet ban of 30s after 3, and the next ban is 60s.
func TestReconnectLoopEscalates(t *testing.T) {
	t.Setenv(penaltySecretEnv, penaltySecret)
	now := time.Unix(1_000_000, 0)
	l := NewLimiter(mustParse(t, penaltyPolicy), Options{Now: fixedClock(&now)})
	loop := func() {
		for range 3 {
			d := l.Admit(context.Background(), request("198.51.100.9:1"))
			if !d.Allowed || d.Offender == nil {
				t.Fatalf("loop admission: allowed %v offender %v", d.Allowed, d.Offender)
			}
			now = now.Add(time.Second)
			d.Release()
		}
	}
	for _, want := range []time.Duration{30 * time.Second, 60 * time.Second} {
		loop()
		d := l.Admit(context.Background(), request("198.51.100.200:1")) // same /24
		if d.Reason != ReasonBanned || d.RetryAfter != want {
			t.Fatalf("got %s retry %v, want banned for %v", d.Reason, d.RetryAfter, want)
		}
		now = now.Add(want)
	}
	// A connection that lives past short_lived is no offence.
	d := l.Admit(context.Background(), request("198.51.100.9:1"))
	now = now.Add(3 * time.Second)
	d.Release()
	if st := l.pen.engine.Stats(); st[0].Penalty != "loop" || st[0].Offences[penalty.KindShortLived] != 6 {
		t.Fatalf("stats %+v, want 6 short-lived offences of loop", st)
	}
}

// TestReloadKeepsBansOfUnchangedPenalties: the same penalty after a reload
// keeps its ban; a changed one starts empty.
func TestReloadKeepsBansOfUnchangedPenalties(t *testing.T) {
	t.Setenv(penaltySecretEnv, penaltySecret)
	now := time.Unix(1_000_000, 0)
	l := NewLimiter(mustParse(t, penaltyPolicy), Options{Now: fixedClock(&now)})
	if err := l.pen.engine.Ban(context.Background(), "spray", keysIP("192.0.2.7"), time.Minute); err != nil {
		t.Fatal(err)
	}
	l.SetPolicy(mustParse(t, penaltyPolicy+"\n"))
	if d := l.Admit(context.Background(), request("192.0.2.7:1")); d.Reason != ReasonBanned {
		t.Fatalf("after an unchanged reload: %s, want banned", d.Reason)
	}
	l.SetPolicy(mustParse(t, strings.Replace(penaltyPolicy, "ban: 10s", "ban: 20s", 1)))
	if d := l.Admit(context.Background(), request("192.0.2.7:1")); !d.Allowed {
		t.Fatalf("after the penalty changed: %s, want the old ban gone", d.Reason)
	}
}

// TestDryRunPolicyBansNothing: in a dry-run policy bans are logged and
// listed but never refuse.
func TestDryRunPolicyBansNothing(t *testing.T) {
	t.Setenv(penaltySecretEnv, penaltySecret)
	now := time.Unix(1_000_000, 0)
	l := NewLimiter(mustParse(t, penaltyPolicy+"mode: dry_run\n"), Options{Now: fixedClock(&now)})
	for range 5 {
		d := l.Admit(context.Background(), request("198.51.100.9:1"))
		now = now.Add(time.Millisecond)
		d.Release()
		if !d.Allowed || d.Reason == ReasonBanned {
			t.Fatalf("dry run: allowed %v reason %s", d.Allowed, d.Reason)
		}
	}
	if b := l.pen.engine.Bans(0); len(b) != 1 || !b[0].DryRun {
		t.Fatalf("bans %+v, want one dry-run ban", b)
	}
}

func TestPenaltyErrors(t *testing.T) {
	base := "version: 1\nrules:\n  - {name: per-ip, key: ip, rate: 1/s}\npenalties:\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"global key", "  - {name: p, key: global, offences: {refused: [per-ip]}}\n", "test.yaml:5:"},
		{"no offence", "  - {name: p, key: ip}\n", "penalties[0].offences: at least one"},
		{"unknown rule", "  - {name: p, key: ip, offences: {refused: [nope]}}\n", `no rule named "nope"`},
		{"unknown reason", "  - {name: p, key: ip, offences: {refused: [\"per-ip:banned\"]}}\n", `unknown reason "banned"`},
		{"invalid without jwt", "  - {name: p, key: ip, offences: {invalid_identity: true}}\n", "needs identity.jwt"},
		{"rule name", "  - {name: per-ip, key: ip, offences: {refused: [per-ip]}}\n", "also a rule's name"},
		{"threshold", "  - {name: p, key: ip, threshold: 65, offences: {refused: [per-ip]}}\n", "penalties[0].threshold: at most 64"},
		{"max_ban", "  - {name: p, key: ip, ban: 1h, max_ban: 1m, offences: {refused: [per-ip]}}\n", "max_ban: must be at least"},
		{"unknown field", "  - {name: p, key: ip, bantime: 1h, offences: {refused: [per-ip]}}\n", "bantime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(base+tc.doc), "test.yaml")
			var pe *Error
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &pe) || pe.Line == 0 {
				t.Fatalf("got %v, want an error with a line, containing %q", err, tc.want)
			}
		})
	}
}

func keysIP(s string) keys.Key { return keys.IP(netip.MustParseAddr(s)) }

// TestInvalidCookieIsAnOffence: a session cookie that fails its HMAC is an
// invalid identity (an offence), an absent cookie is not; after 2 invalid
// cookies the address is banned.
func TestInvalidCookieIsAnOffence(t *testing.T) {
	t.Setenv("WSLIMIT_COOKIE_SECRET", "a cookie secret of thirty-two bytes!")
	doc := `version: 1
identity:
  session: {cookie: sid, hmac_secret_env: WSLIMIT_COOKIE_SECRET}
rules:
  - {name: per-session, key: cookie, connections: 10}
penalties:
  - {name: forged, key: ip, offences: {invalid_identity: true}, threshold: 2, window: 1m, ban: 1m}
`
	now := time.Unix(1_000_000, 0)
	l := NewLimiter(mustParse(t, doc), Options{Now: fixedClock(&now)})
	admit := func(addr string, h ...string) *Decision {
		d := l.Admit(context.Background(), request(addr, h...))
		d.Release()
		return d
	}
	for range 3 {
		if d := admit("192.0.2.20:1"); d.InvalidToken || d.Reason == ReasonBanned {
			t.Fatalf("no cookie: invalid %v reason %s, want neither", d.InvalidToken, d.Reason)
		}
	}
	for i := range 2 {
		if d := admit("192.0.2.21:1", "Cookie", "sid=alice.forgedmacforgedmacforgedmacforgedmacfor"); !d.InvalidToken {
			t.Fatalf("forged cookie %d: InvalidToken false", i)
		}
	}
	if d := admit("192.0.2.21:1"); d.Reason != ReasonBanned {
		t.Fatalf("after 2 forged cookies: reason %s, want banned", d.Reason)
	}
}
