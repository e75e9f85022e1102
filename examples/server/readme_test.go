package main

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wslimit/wslimit/policy"
)

// curlBlock returns the shell block of the README at path that holds the
// curl sequence (it defines ws()).
func curlBlock(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile("(?ms)^```sh\n(.*?)^```\n").FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], "ws() {") {
			return m[1]
		}
	}
	t.Fatalf("%s has no curl sequence", path)
	return ""
}

// TestREADMECurl runs the READMEs' curl sequence, as written, against the
// demo handler: the sixth handshake gets 429 with Retry-After and the JSON
// body, and the whole sequence ends (the held WebSockets by --max-time).
// Only its URL is the test server's, and its "sleep 1" waits until the
// server holds the five connections, so that a loaded machine cannot
// reorder them.
func TestREADMECurl(t *testing.T) {
	block := curlBlock(t, "README.md")
	if top := curlBlock(t, "../../README.md"); top != block {
		t.Errorf("the top-level README's curl sequence differs from examples/server/README.md's:\n%s\n%s", top, block)
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl on PATH: the README's curl sequence is not run")
	}
	p, err := loadPolicy("")
	if err != nil {
		t.Fatal(err)
	}
	store := policy.NewMemoryStore()
	defer store.Close()
	g, reg, err := newGuard(p, store, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	srv := httptest.NewServer(newMux(g, reg))
	defer srv.Close()

	if !strings.Contains(block, "http://127.0.0.1:8080/ws") || !strings.Contains(block, "sleep 1;") {
		t.Fatalf("the curl sequence no longer has the URL or the sleep this test replaces:\n%s", block)
	}
	ready := filepath.Join(t.TempDir(), "ready")
	script := `sleep() { while [ ! -e "$READY" ]; do command sleep 0.05; done; }` + "\n" +
		strings.ReplaceAll(block, "http://127.0.0.1:8080", srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env = append(os.Environ(), "READY="+ready)
	go func() {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if publicStats(g).Rules[0].Live == 5 {
				_ = os.WriteFile(ready, nil, 0o600)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	began := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(began)
	if err != nil {
		t.Fatalf("the curl sequence failed after %v: %v\n%s", took, err, out)
	}
	for _, want := range []string{"HTTP/1.1 429 Too Many Requests", "Retry-After: 1", `{"error":"Too Many Requests","rule":"per-ip","reason":"connections","retry_after":1}`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("the curl sequence ended after %v", took.Round(time.Millisecond))
}
