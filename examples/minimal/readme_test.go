package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wslimit/wslimit/policy"
)

// fences returns the bodies of the README's fenced blocks of lang, in order.
func fences(t *testing.T, lang string) []string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?ms)^```" + lang + "\n(.*?)^```\n")
	var out []string
	for _, m := range re.FindAllStringSubmatch(string(readme), -1) {
		out = append(out, m[1])
	}
	return out
}

// TestREADMEIsTheProgram: the README's first Go block is this program,
// byte for byte, so that what a newcomer copies is what runs.
func TestREADMEIsTheProgram(t *testing.T) {
	blocks := fences(t, "go")
	if len(blocks) == 0 {
		t.Fatal("README has no Go block")
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if blocks[0] != string(src) {
		readme, prog := strings.Split(blocks[0], "\n"), strings.Split(string(src), "\n")
		for i := range max(len(readme), len(prog)) {
			var a, b string
			if i < len(readme) {
				a = readme[i]
			}
			if i < len(prog) {
				b = prog[i]
			}
			if a != b {
				t.Fatalf("README's first Go block differs from examples/minimal/main.go at line %d:\nREADME:  %q\nmain.go: %q", i+1, a, b)
			}
		}
	}
}

// TestREADMERecipesParse: every policy in the README loads, the program's
// and the recipes'; the JWT recipe's key file is replaced by a real public key.
func TestREADMERecipesParse(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(t.TempDir(), "jwt-public.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	docs := append([]string{policyYAML}, fences(t, "yaml")...)
	if len(docs) < 4 {
		t.Fatalf("README has %d policies, want the program's and three recipes", len(docs))
	}
	for i, doc := range docs {
		doc = strings.ReplaceAll(doc, "/etc/app/jwt-public.pem", pemFile)
		p, err := policy.Parse([]byte(doc), "README.md policy")
		if err != nil {
			t.Errorf("README policy %d:\n%s\n%v", i+1, doc, err)
			continue
		}
		if len(p.Rules()) == 0 {
			t.Errorf("README policy %d has no rules", i+1)
		}
	}
}
