package ws

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
)

const testSecret = "0123456789abcdef0123456789abcdef-test-only"

const identityPolicy = `version: 1
client_ip:
  trusted_proxies: [127.0.0.1/32, "::1/128"]
identity:
  jwt:
    from: [header:Authorization, subprotocol, cookie:token]
    algorithms: [HS256]
    secret_env: WSLIMIT_TEST_JWT_SECRET
    issuer: https://auth.test
    audience: chat
rules:
  - name: per-user
    key: jwt
    on_missing: reject
    connections: 2
    tiers: {claim: plan, values: {pro: {connections: 4}}}
  - name: per-ip
    key: ip
    connections: 100
`

func token(t *testing.T, sub, plan string) string {
	t.Helper()
	claims := jwt.MapClaims{
		"sub": sub, "iss": "https://auth.test", "aud": "chat",
		"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(),
	}
	if plan != "" {
		claims["plan"] = plan
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type idServer struct {
	*httptest.Server
	store *policy.MemoryStore
}

func newIdentityServer(t *testing.T, up websocket.Upgrader) *idServer {
	t.Helper()
	t.Setenv("WSLIMIT_TEST_JWT_SECRET", testSecret)
	p := mustPolicy(t, identityPolicy)
	s := &idServer{store: policy.NewMemoryStore()}
	g, err := New(p, Options{Store: s.store, Upgrader: up})
	if err != nil {
		t.Fatal(err)
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(func() { s.Close(); g.Close() })
	return s
}

func (s *idServer) dial(h http.Header, protocols ...string) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: slack, Subprotocols: protocols}
	return d.Dial("ws"+strings.TrimPrefix(s.URL, "http"), h)
}

func bearer(tok, xff string) http.Header {
	h := http.Header{"Authorization": {"Bearer " + tok}}
	if xff != "" {
		h.Set("X-Forwarded-For", xff)
	}
	return h
}

// TestPerUserCapAcrossIPs: one user on many addresses (through a trusted
// proxy) is one key.
func TestPerUserCapAcrossIPs(t *testing.T) {
	s := newIdentityServer(t, websocket.Upgrader{})
	alice := token(t, "alice", "")
	for i, ip := range []string{"198.51.100.1", "198.51.100.2"} {
		c, _, err := s.dial(bearer(alice, ip))
		if err != nil {
			t.Fatalf("alice connection %d: %v", i+1, err)
		}
		defer c.Close()
	}
	_, resp, err := s.dial(bearer(alice, "203.0.113.50"))
	if err == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("alice's third connection from a third address: %v, want 429", err)
	}
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if body["rule"] != "per-user" {
		t.Errorf("refused by %v, want per-user", body["rule"])
	}
}

// TestUsersBehindOneIP: two users behind one NAT each get their own cap.
func TestUsersBehindOneIP(t *testing.T) {
	s := newIdentityServer(t, websocket.Upgrader{})
	for _, user := range []string{"bob", "carol"} {
		tok := token(t, user, "")
		for i := 0; i < 2; i++ {
			c, _, err := s.dial(bearer(tok, "192.0.2.10"))
			if err != nil {
				t.Fatalf("%s connection %d behind the shared address: %v", user, i+1, err)
			}
			defer c.Close()
		}
		if _, resp, err := s.dial(bearer(tok, "192.0.2.10")); err == nil || resp.StatusCode != 429 {
			t.Fatalf("%s's third connection: %v, want 429", user, err)
		}
	}
}

func TestTiers(t *testing.T) {
	s := newIdentityServer(t, websocket.Upgrader{})
	pro := token(t, "dave", "pro")
	for i := 0; i < 4; i++ {
		c, _, err := s.dial(bearer(pro, ""))
		if err != nil {
			t.Fatalf("pro connection %d: %v", i+1, err)
		}
		defer c.Close()
	}
	if _, resp, err := s.dial(bearer(pro, "")); err == nil || resp.StatusCode != 429 {
		t.Fatalf("pro's fifth connection: %v, want 429", err)
	}
	free := token(t, "erin", "free")
	for i := 0; i < 2; i++ {
		c, _, err := s.dial(bearer(free, ""))
		if err != nil {
			t.Fatalf("free connection %d: %v", i+1, err)
		}
		defer c.Close()
	}
	if _, resp, err := s.dial(bearer(free, "")); err == nil || resp.StatusCode != 429 {
		t.Fatalf("an unknown tier value gets the rule's limits: %v, want 429", err)
	}
}

// TestOnMissingReject: no token, or a token that fails verification, is a
// missing identity: 401 with a JSON body, nothing counted.
func TestOnMissingReject(t *testing.T) {
	s := newIdentityServer(t, websocket.Upgrader{})
	forged := token(t, "mallory", "pro")
	forged = forged[:len(forged)-4] + "AAAA" // bad signature
	cases := map[string]http.Header{
		"no token":      nil,
		"bad signature": bearer(forged, ""),
		"garbage":       {"Authorization": {"Bearer %%%.%%%.%%%"}},
		"basic scheme":  {"Authorization": {"Basic YWxhZGRpbjpvcGVuc2VzYW1l"}},
	}
	for name, h := range cases {
		_, resp, err := s.dial(h)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: %v, want 401", name, err)
			continue
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if body["rule"] != "per-user" || body["reason"] != "missing_identity" {
			t.Errorf("%s: body %v", name, body)
		}
		if resp.Header.Get("Retry-After") != "" {
			t.Errorf("%s: 401 with Retry-After", name)
		}
	}
	if got := s.store.Stats("per-ip").Connections; got != 0 {
		t.Errorf("refused handshakes hold %d per-ip slots", got)
	}
}

// TestSubprotocolToken: a browser-style token in Sec-WebSocket-Protocol
// identifies the user and is never echoed back as the subprotocol.
func TestSubprotocolToken(t *testing.T) {
	for _, tc := range []struct {
		name      string
		up        websocket.Upgrader
		offered   []string
		wantProto string
	}{
		{"app protocol selected", websocket.Upgrader{Subprotocols: []string{"chat"}}, []string{"chat"}, "chat"},
		{"token-only offer", websocket.Upgrader{Subprotocols: []string{"chat"}}, nil, ""},
		// An application that names the protocol in its response header
		// (gorilla's way when Upgrader.Subprotocols is nil) selects none.
		{"no server protocols", websocket.Upgrader{}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newIdentityServer(t, tc.up)
			tok := token(t, "frank", "")
			offered := append(append([]string{}, tc.offered...), "bearer."+tok)
			c, resp, err := s.dial(nil, offered...)
			if err != nil {
				t.Fatalf("dial with subprotocol token: %v", err)
			}
			defer c.Close()
			if got := c.Subprotocol(); got != tc.wantProto {
				t.Errorf("selected subprotocol = %q, want %q", got, tc.wantProto)
			}
			for k, vs := range resp.Header {
				for _, v := range vs {
					if strings.Contains(v, tok) {
						t.Errorf("token echoed in response header %s", k)
					}
				}
			}
			if got := s.store.Stats("per-user").Connections; got != 1 {
				t.Errorf("per-user slots = %d, want 1 (token identified the user)", got)
			}
		})
	}
}
