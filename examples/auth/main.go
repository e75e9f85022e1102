// Command auth is a guarded WebSocket echo server that limits users as
// users: a per-user connection cap keyed by the subject of a verified JWT,
// with a higher cap for the "pro" plan, next to a per-IP and a global rule.
//
//	go run ./examples/auth [-addr 127.0.0.1:8082]
//
// It serves a page on /, DEMO tokens on /token?user=NAME&plan=free|pro, and
// the guarded echo endpoint on /ws (embedded policy.yaml, reject mode
// close).
//
// DEMO ONLY: /token hands a signed token to anyone who asks, for any user
// name. A real application issues tokens only after authenticating the
// user (its login, an identity provider), and the WebSocket server only
// verifies them.
package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

//go:embed policy.yaml
var policyYAML []byte

//go:embed index.html
var indexHTML []byte

// secretEnv is the environment variable the embedded policy reads the
// HS256 secret from (identity.jwt.secret_env). The program overwrites it
// with a fresh random secret at every start, so tokens from an earlier run
// do not verify.
const secretEnv = "WSLIMIT_AUTH_DEMO_SECRET"

// The token claims the embedded policy checks (identity.jwt.issuer and
// audience).
const (
	tokenIssuer   = "wslimit-auth-demo"
	tokenAudience = "wslimit-auth-demo"
	tokenTTL      = time.Hour
)

// appProtocol is the application subprotocol the server offers. A browser
// that offers ["chat", "bearer.<token>"] must get "chat" back: the token
// entry is removed by the guard before the upgrader picks, and a browser
// fails a handshake in which it asked for subprotocols and got none.
const appProtocol = "chat"

func main() {
	addr := flag.String("addr", "127.0.0.1:8082", "listen address")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, log); err != nil {
		problems := []error{err} // a policy's problems: one line each
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			problems = j.Unwrap()
		}
		for _, e := range problems {
			log.Error("server failed", "error", e)
		}
		os.Exit(1)
	}
}

// loadPolicy makes a random HS256 secret, puts it in the environment
// variable the embedded policy names, and loads the policy. It returns the
// secret for the demo token issuer.
func loadPolicy() (*policy.Policy, []byte, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, nil, err
	}
	// 64 hex characters: the secret is these bytes (RFC 7518 wants at
	// least 32 for HS256), and an environment variable cannot hold NULs.
	secret := []byte(hex.EncodeToString(raw[:]))
	if err := os.Setenv(secretEnv, string(secret)); err != nil {
		return nil, nil, err
	}
	p, err := policy.Parse(policyYAML, "policy.yaml (embedded)")
	if err != nil {
		return nil, nil, err
	}
	return p, secret, nil
}

func newGuard(p *policy.Policy, store policy.Store, log *slog.Logger) (*ws.Guard, error) {
	return ws.New(p, ws.Options{
		Store:  store,
		Logger: log, // rejection lines: rule, reason, key, client IP, invalid_token; never a token
		Upgrader: websocket.Upgrader{
			ReadBufferSize:  1024,
			WriteBufferSize: 1024,
			Subprotocols:    []string{appProtocol},
			// CheckOrigin nil: same origin only. This matters with the
			// cookie source: a cross-site page must not be able to open a
			// WebSocket that carries the user's cookie.
		},
	})
}

func run(addr string, log *slog.Logger) error {
	p, secret, err := loadPolicy()
	if err != nil {
		return err
	}
	g, err := newGuard(p, nil, log)
	if err != nil {
		return err
	}
	defer g.Close()

	iss := &issuer{secret: secret, now: time.Now}
	// Every timeout a public server needs: slow headers and idle
	// keep-alive connections lose their descriptors.
	srv := &http.Server{Addr: addr, Handler: newMux(g, iss), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("wslimit authenticated demo listening", "url", fmt.Sprintf("http://%s/", addr))
	log.Warn("DEMO ONLY: /token issues tokens to anyone without authentication")
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// issuer signs DEMO tokens. It stands in for a real login or identity
// provider and authenticates nobody.
type issuer struct {
	secret []byte
	now    func() time.Time
}

var userName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,32}$`)

// issue returns an HS256 token for user on plan and its expiry.
func (is *issuer) issue(user, plan string) (string, time.Time, error) {
	now := is.now()
	exp := now.Add(tokenTTL)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":  user,
		"plan": plan,
		"iss":  tokenIssuer,
		"aud":  tokenAudience,
		"iat":  now.Unix(),
		"exp":  exp.Unix(),
	}).SignedString(is.secret)
	return tok, exp, err
}

// tokenResponse is the JSON answer of /token.
type tokenResponse struct {
	Token     string `json:"token,omitempty"` // absent when set as an HttpOnly cookie
	User      string `json:"user"`
	Plan      string `json:"plan"`
	ExpiresAt int64  `json:"expires_at"`
	Cookie    bool   `json:"cookie"`
}

// welcome is the first message of an admitted connection.
type welcome struct {
	Type  string `json:"type"`
	User  string `json:"user"`
	Limit int    `json:"limit"` // the per-user cap that applied (by plan)
}

// newMux serves the page on /, demo tokens on /token, a cookie reset on
// /logout and the guarded echo endpoint on /ws.
func newMux(g *ws.Guard, iss *issuer) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(indexHTML)
	})

	// DEMO ONLY: anyone may have a token for any user. Never ship this.
	token := func(w http.ResponseWriter, r *http.Request) {
		user := r.FormValue("user")
		plan := r.FormValue("plan")
		if plan == "" {
			plan = "free"
		}
		if !userName.MatchString(user) {
			http.Error(w, "user: 1-32 of A-Z a-z 0-9 . _ -", http.StatusBadRequest)
			return
		}
		if plan != "free" && plan != "pro" {
			http.Error(w, "plan: free or pro", http.StatusBadRequest)
			return
		}
		tok, exp, err := iss.issue(user, plan)
		if err != nil {
			http.Error(w, "cannot sign", http.StatusInternalServerError)
			return
		}
		resp := tokenResponse{Token: tok, User: user, Plan: plan, ExpiresAt: exp.Unix()}
		if r.FormValue("cookie") == "1" {
			// The cookie source: the browser sends it with the handshake.
			// HttpOnly keeps it from scripts; a real deployment over TLS
			// also sets Secure.
			http.SetCookie(w, &http.Cookie{
				Name: "token", Value: tok, Path: "/ws",
				Expires: exp, HttpOnly: true, SameSite: http.SameSiteStrictMode,
			})
			resp.Token, resp.Cookie = "", true
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(resp)
	}
	mux.HandleFunc("GET /token", token)
	mux.HandleFunc("POST /token", token)

	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "token", Value: "", Path: "/ws", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		w.WriteHeader(http.StatusNoContent)
	})

	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := g.Upgrade(w, r, nil)
		if err != nil {
			return // the rejection (close 1013/1008) or upgrade error is already written
		}
		defer conn.Close() // releases every slot this connection holds
		conn.SetReadLimit(64 << 10)
		hello := welcome{Type: "welcome", User: conn.Decision().Identity}
		for _, c := range conn.Decision().Claims() {
			if c.Rule == "per-user" {
				hello.Limit = c.Conns
			}
		}
		if err := conn.WriteJSON(hello); err != nil {
			return
		}
		for {
			mt, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if err := conn.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	})
	return mux
}
