package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"
)

// forgedToken returns a well-formed JWT (HS256 header, a sub and an exp an
// hour ahead) whose signature is random: what a token sprayer sends. Each
// attempt gets its own, so no verifier cache can answer it.
func forgedToken(i int) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	payload := enc.EncodeToString(fmt.Appendf(nil, `{"sub":"spray-%d","exp":%d}`, i, time.Now().Add(time.Hour).Unix()))
	var sig [32]byte
	_, _ = rand.Read(sig[:])
	return header + "." + payload + "." + enc.EncodeToString(sig[:])
}
