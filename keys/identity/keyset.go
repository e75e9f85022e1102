package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"slices"
	"strings"
)

// Limits on key material read from files.
const (
	maxKeyFileBytes    = 1 << 20
	maxSecretFileBytes = 64 << 10
	minRSABits         = 2048
)

// verifyKey is one verification key with the algorithm its JWK pins, if any.
type verifyKey struct {
	key any    // *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey or []byte
	alg string // "" unless a JWK names its alg
}

// hmacSize is the minimum secret length, in bytes, of each HMAC algorithm.
var hmacSize = map[string]int{"HS256": 32, "HS384": 48, "HS512": 64}

// knownAlgs are the algorithms a verifier may allow.
var knownAlgs = []string{
	"HS256", "HS384", "HS512",
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA",
}

// checkAlgorithms validates an allow-list and reports whether it is
// symmetric (HS*) or asymmetric; a mix is refused.
func checkAlgorithms(list []string) (algs []string, symmetric bool, err error) {
	if len(list) == 0 {
		return nil, false, errors.New("identity: algorithms: required (for example [RS256] or [HS256])")
	}
	var hs, pk []string
	for i, a := range list {
		switch {
		case strings.EqualFold(strings.TrimSpace(a), "none"):
			return nil, false, fmt.Errorf("identity: algorithms[%d]: %q is never allowed", i, a)
		case !slices.Contains(knownAlgs, a):
			return nil, false, fmt.Errorf("identity: algorithms[%d]: unknown algorithm %q (want one of %s)", i, a, strings.Join(knownAlgs, ", "))
		case slices.Contains(algs, a):
			continue
		case isHMAC(a):
			hs = append(hs, a)
		default:
			pk = append(pk, a)
		}
		algs = append(algs, a)
	}
	if len(hs) > 0 && len(pk) > 0 {
		return nil, false, fmt.Errorf("identity: algorithms: HMAC (%s) cannot be mixed with public-key algorithms (%s): that would allow key confusion",
			strings.Join(hs, ", "), strings.Join(pk, ", "))
	}
	return algs, len(hs) > 0, nil
}

// minSecret is the smallest HMAC secret every allowed HS* algorithm accepts.
func minSecret(algs []string) int {
	n := 0
	for _, a := range algs {
		n = max(n, hmacSize[a])
	}
	return n
}

// usable reports whether key can verify a token signed with alg.
func usable(alg string, key any) bool {
	switch k := key.(type) {
	case []byte:
		return isHMAC(alg) && len(k) >= hmacSize[alg]
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		case "ES512":
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA" && len(k) == ed25519.PublicKeySize
	}
	return false
}

// usableByAny reports whether one of algs can use key.
func usableByAny(algs []string, key any) bool {
	return slices.ContainsFunc(algs, func(a string) bool { return usable(a, key) })
}

// describe names a key's type for error messages, without its material.
func describe(key any) string {
	switch k := key.(type) {
	case []byte:
		return fmt.Sprintf("a %d-byte HMAC secret", len(k))
	case *rsa.PublicKey:
		return fmt.Sprintf("an RSA-%d public key", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "an ECDSA " + k.Curve.Params().Name + " public key"
	case ed25519.PublicKey:
		return "an Ed25519 public key"
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return "a private key"
	default:
		return fmt.Sprintf("a %T", key)
	}
}

// checkKey validates one key given in Go and returns a private copy.
func checkKey(key any) (any, error) {
	switch k := key.(type) {
	case []byte:
		return bytes.Clone(k), nil
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return nil, errors.New("nil RSA key")
		}
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key has %d bits; at least %d are required", k.N.BitLen(), minRSABits)
		}
		return &rsa.PublicKey{N: new(big.Int).Set(k.N), E: k.E}, nil
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return nil, errors.New("nil ECDSA key")
		}
		return k, nil // immutable in practice; the curve is checked by usable
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 key has %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		return ed25519.PublicKey(bytes.Clone(k)), nil
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return nil, errors.New("is a private key; give the verifier its public key")
	default:
		return nil, fmt.Errorf("unsupported key type %T", key)
	}
}

// checkKeys validates the keys given to NewJWTWithKeys.
func checkKeys(in map[string]any, algs []string) (map[string]verifyKey, error) {
	if len(in) == 0 {
		return nil, errors.New("identity: no keys given")
	}
	out := make(map[string]verifyKey, len(in))
	for kid, key := range in {
		k, err := checkKey(key)
		if err != nil {
			return nil, fmt.Errorf("identity: key %q: %w", kid, err)
		}
		if !usableByAny(algs, k) {
			return nil, fmt.Errorf("identity: key %q is %s, which none of algorithms [%s] can use",
				kid, describe(k), strings.Join(algs, ", "))
		}
		out[kid] = verifyKey{key: k}
	}
	return out, nil
}

// loadKeys loads the key material named by cfg.
func loadKeys(cfg JWTConfig, algs []string, symmetric bool) (map[string]verifyKey, error) {
	set := 0
	for _, s := range []string{cfg.KeyFile, cfg.SecretEnv, cfg.SecretFile} {
		if s != "" {
			set++
		}
	}
	if set != 1 {
		if symmetric {
			return nil, errors.New("identity: set exactly one of secret_env, secret_file or key_file (a JWKS with oct keys)")
		}
		return nil, errors.New("identity: set key_file (a PEM public key or a JWKS file); secret_env and secret_file are for HS* algorithms only")
	}
	if cfg.KeyFile != "" {
		return loadKeyFile(cfg.KeyFile, algs)
	}
	if !symmetric {
		return nil, fmt.Errorf("identity: secret_env and secret_file are for HS* algorithms only, not [%s]; set key_file", strings.Join(algs, ", "))
	}
	var secret []byte
	var what string
	if cfg.SecretEnv != "" {
		what = "secret_env " + cfg.SecretEnv
		v, ok := os.LookupEnv(cfg.SecretEnv)
		if !ok || v == "" {
			return nil, fmt.Errorf("identity: %s: environment variable is not set or empty", what)
		}
		secret = []byte(v)
	} else {
		what = "secret_file " + cfg.SecretFile
		b, err := readLimited(cfg.SecretFile, maxSecretFileBytes)
		if err != nil {
			return nil, fmt.Errorf("identity: %s: %w", what, err)
		}
		secret = bytes.TrimRight(b, "\r\n")
	}
	if need := minSecret(algs); len(secret) < need {
		return nil, fmt.Errorf("identity: %s: secret is %d bytes; [%s] needs at least %d (RFC 7518 section 3.2)",
			what, len(secret), strings.Join(algs, ", "), need)
	}
	return map[string]verifyKey{"": {key: secret}}, nil
}

// readLimited reads a whole file of at most limit bytes.
func readLimited(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("file is larger than %d bytes", limit)
	}
	return b, nil
}

// loadKeyFile reads a PEM public key or a JWKS file.
func loadKeyFile(name string, algs []string) (map[string]verifyKey, error) {
	b, err := readLimited(name, maxKeyFileBytes)
	if err != nil {
		return nil, fmt.Errorf("identity: key_file %s: %w", name, err)
	}
	var ks map[string]verifyKey
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		ks, err = parseJWKS(t, algs)
	} else {
		ks, err = parsePEM(b, algs)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: key_file %s: %w", name, err)
	}
	return ks, nil
}

// parsePEM reads the single public key of a PEM file.
func parsePEM(b []byte, algs []string) (map[string]verifyKey, error) {
	var found []any
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var key any
		var err error
		switch {
		case block.Type == "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case block.Type == "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case block.Type == "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		case strings.Contains(block.Type, "PRIVATE KEY"):
			return nil, fmt.Errorf("holds a %s block; give the verifier the public key only", block.Type)
		default:
			continue // EC PARAMETERS and the like
		}
		if err != nil {
			return nil, fmt.Errorf("%s block: %w", block.Type, err)
		}
		found = append(found, key)
	}
	switch len(found) {
	case 0:
		return nil, errors.New("no PEM public key (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE block) and not a JWKS file")
	case 1:
	default:
		return nil, fmt.Errorf("holds %d keys; use a JWKS file to select keys by kid", len(found))
	}
	key, err := checkKey(found[0])
	if err != nil {
		return nil, err
	}
	if !usableByAny(algs, key) {
		return nil, fmt.Errorf("holds %s, which none of algorithms [%s] can use", describe(key), strings.Join(algs, ", "))
	}
	return map[string]verifyKey{"": {key: key}}, nil
}

// jwk is the subset of RFC 7517/7518 members this package reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
	K   string `json:"k"`
}

// parseJWKS reads a JWKS document. Keys that are not for signatures, name
// an algorithm outside algs, have an unsupported kty or curve, or that no
// allowed algorithm can use are skipped; malformed keys are errors.
func parseJWKS(b []byte, algs []string) (map[string]verifyKey, error) {
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	if len(doc.Keys) == 0 {
		return nil, errors.New("JWKS: no keys")
	}
	out := make(map[string]verifyKey, len(doc.Keys))
	for i, k := range doc.Keys {
		if (k.Use != "" && k.Use != "sig") || (k.Alg != "" && !slices.Contains(algs, k.Alg)) {
			continue
		}
		key, err := k.publicKey()
		if err != nil {
			return nil, fmt.Errorf("JWKS key %d (kid %q): %w", i, k.Kid, err)
		}
		if key == nil || !usableByAny(algs, key) {
			continue
		}
		if k.Alg != "" && !usable(k.Alg, key) {
			return nil, fmt.Errorf("JWKS key %d (kid %q): alg %s does not fit %s", i, k.Kid, k.Alg, describe(key))
		}
		if _, dup := out[k.Kid]; dup {
			return nil, fmt.Errorf("JWKS key %d: duplicate kid %q", i, k.Kid)
		}
		out[k.Kid] = verifyKey{key: key, alg: k.Alg}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("JWKS: none of its %d keys is usable with algorithms [%s]", len(doc.Keys), strings.Join(algs, ", "))
	}
	return out, nil
}

// publicKey decodes the key; nil, nil means an unsupported kty or curve.
func (k *jwk) publicKey() (any, error) {
	switch k.Kty {
	case "RSA":
		return k.rsaKey()
	case "EC":
		return k.ecKey()
	case "OKP":
		if k.Crv != "Ed25519" {
			return nil, nil
		}
		x, err := b64field("x", k.X)
		if err != nil {
			return nil, err
		}
		return checkKey(ed25519.PublicKey(x))
	case "oct":
		secret, err := b64field("k", k.K)
		if err != nil {
			return nil, err
		}
		return secret, nil
	default:
		return nil, nil
	}
}

// rsaKey decodes an RSA key.
func (k *jwk) rsaKey() (any, error) {
	n, err := b64field("n", k.N)
	if err != nil {
		return nil, err
	}
	e, err := b64field("e", k.E)
	if err != nil {
		return nil, err
	}
	if len(e) > 4 {
		return nil, errors.New("exponent e is too large")
	}
	ev := int(new(big.Int).SetBytes(e).Int64())
	if ev < 3 || ev%2 == 0 {
		return nil, errors.New("exponent e is invalid")
	}
	return checkKey(&rsa.PublicKey{N: new(big.Int).SetBytes(n), E: ev})
}

// ecKey decodes an EC key; nil, nil means an unsupported curve.
func (k *jwk) ecKey() (any, error) {
	var curve elliptic.Curve
	switch k.Crv {
	case "P-256":
		curve = elliptic.P256()
	case "P-384":
		curve = elliptic.P384()
	case "P-521":
		curve = elliptic.P521()
	default:
		return nil, nil
	}
	x, err := b64field("x", k.X)
	if err != nil {
		return nil, err
	}
	y, err := b64field("y", k.Y)
	if err != nil {
		return nil, err
	}
	size := (curve.Params().BitSize + 7) / 8
	if len(x) != size || len(y) != size {
		return nil, fmt.Errorf("%s coordinates must be %d bytes", k.Crv, size)
	}
	point := append(append([]byte{4}, x...), y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, err
	}
	return pub, nil
}

// b64field decodes a base64url member of a JWK (padding tolerated).
func b64field(name, v string) ([]byte, error) {
	if v == "" {
		return nil, fmt.Errorf("member %q is missing", name)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(v, "="))
	if err != nil {
		return nil, fmt.Errorf("member %q: %w", name, err)
	}
	return b, nil
}
