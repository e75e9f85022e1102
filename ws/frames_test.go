package ws

import (
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestHotPathFrames holds the stack frames of the functions that sit on a
// new connection's goroutine during the admission to the sizes
// docs/benchmarks.md gives ("Frames small enough not to grow the stack"):
// a connection's goroutine starts with a small stack, and a few dozen
// bytes more on the deepest path make most guarded connections copy their
// stack once more (~1.8 µs each), which no functional test would notice.
// It reads the locals= field of the compiler's assembly listing (go build
// -gcflags=-S, replayed from the build cache when nothing changed). A
// budget raised on purpose is raised here and in the docs.
func TestHotPathFrames(t *testing.T) {
	// The budgets are what Go 1.26 (go.mod's version) compiles; another
	// compiler lays frames out differently.
	if v := runtime.Version(); !strings.HasPrefix(v, "go1.26") {
		t.Skipf("frame budgets are for go1.26, this is %s", v)
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	budgets := map[string]int{
		"github.com/wslimit/wslimit/ws.(*Guard).Upgrade":           56,
		"github.com/wslimit/wslimit/policy.(*Limiter).admit":       120,
		"github.com/wslimit/wslimit/policy.(*MemoryStore).Admit":   432,
		"github.com/wslimit/wslimit/policy.(*MemoryStore).Release": 168,
		"github.com/wslimit/wslimit/policy.(*Decision).collect":    464,
	}
	cmd := exec.Command(gobin, "build", "-gcflags=github.com/wslimit/wslimit/...=-S", "-o", os.DevNull, ".")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build -gcflags=-S: %v\n%.2000s", err, out)
	}
	re := regexp.MustCompile(`(?m)^(\S+) STEXT.* locals=0x([0-9a-f]+)`)
	seen := map[string]bool{}
	for _, m := range re.FindAllSubmatch(out, -1) {
		name := string(m[1])
		budget, ok := budgets[name]
		if !ok {
			continue
		}
		locals, err := strconv.ParseInt(string(m[2]), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		seen[name] = true
		t.Logf("%s: %d bytes of locals (budget %d)", name, locals, budget)
		if int(locals) > budget {
			t.Errorf("%s has %d bytes of locals, budget %d: a connection's goroutine may grow its stack once more", name, locals, budget)
		}
	}
	for name := range budgets {
		if !seen[name] {
			t.Errorf("%s not in the compiler's listing (renamed or inlined?)", name)
		}
	}
}
