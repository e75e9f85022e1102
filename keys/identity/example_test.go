package identity_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/keys/identity"
)

func ExampleNewJWTWithKeys() {
	secret := []byte("an HS256 secret of at least 32 bytes")
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)

	v, err := identity.NewJWTWithKeys(identity.JWTConfig{
		Algorithms: []string{"HS256"},
		From:       []string{"header:Authorization", "subprotocol"},
		Issuer:     "https://auth.example.com",
		Leeway:     30 * time.Second,
	}, map[string]any{"": secret})
	if err != nil {
		panic(err)
	}

	// What the identity provider would issue.
	token, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":  "user-17",
		"plan": "pro",
		"iss":  "https://auth.example.com",
		"exp":  now.Add(time.Hour).Unix(),
	}).SignedString(secret)

	// A browser offers the token as a subprotocol next to a real one.
	r := httptest.NewRequest("GET", "/ws", nil)
	r.Header.Set("Sec-WebSocket-Protocol", "chat, bearer."+token)

	id, err := v.Identify(r, now)
	if err != nil {
		panic(err)
	}
	plan, _ := id.Claim("plan")
	fmt.Println(id.Subject, plan, id.Source, id.Expires.Format(time.RFC3339))

	// The guard hides the token from the upgrader's subprotocol choice.
	fmt.Println(strings.Join(v.TokenFreeProtocols(r.Header), ", "))

	// Past exp plus the leeway, the token is refused.
	_, err = v.Identify(r, now.Add(time.Hour+30*time.Second))
	fmt.Println(errors.Is(err, identity.ErrInvalidToken), errors.Is(err, jwt.ErrTokenExpired))

	// Without a token.
	_, err = v.Identify(httptest.NewRequest("GET", "/ws", nil), now)
	fmt.Println(err)
	// Output:
	// user-17 pro subprotocol:bearer. 2030-01-01T13:00:00Z
	// chat
	// true true
	// identity: no token
}

func ExampleHMACCookieVerifier() {
	secret := []byte("a cookie secret of at least 32 bytes")
	value := identity.SignHMACCookie(secret, "session-8c1f")

	c := identity.Cookie{Name: "sid", Verify: identity.HMACCookieVerifier(secret)}

	r := httptest.NewRequest("GET", "/ws", nil)
	r.AddCookie(&http.Cookie{Name: "sid", Value: value})
	key, ok := c.Identify(r)
	fmt.Println(key, ok)

	forged := httptest.NewRequest("GET", "/ws", nil)
	forged.AddCookie(&http.Cookie{Name: "sid", Value: "session-0000" + value[len("session-8c1f"):]})
	_, ok = c.Identify(forged)
	fmt.Println(ok)
	// Output:
	// s:session-8c1f true
	// false
}
