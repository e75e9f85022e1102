//go:build unix

package reload

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestSIGHUP: with Options.SIGHUP, the signal reloads at once. The file
// event of the same change is debounced for an hour, so only the signal
// can have reloaded. Watch registers the signal before it returns, so the
// signal cannot kill the test process.
func TestSIGHUP(t *testing.T) {
	h := newHarness(t, capDoc(1), Options{Debounce: time.Hour, SIGHUP: true})
	c1 := h.admit(t)
	h.refused(t)

	h.write(t, capDoc(3))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	h.waitReloads(t, 1)
	if logs := h.logs.String(); !strings.Contains(logs, "trigger=signal") {
		t.Errorf("reload not logged as triggered by the signal:\n%s", logs)
	}
	c2, c3 := h.admit(t), h.admit(t)
	h.refused(t)
	h.closeAll(t, c1, c2, c3)
}

// TestConfigMapSwap: a Kubernetes ConfigMap volume changes by swapping its
// "..data" symlink; the file's own name gets no event.
func TestConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, doc string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "policy.yaml"), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_00_00_00.1", capDoc(1))
	for _, l := range [][2]string{
		{"..2026_01_01_00_00_00.1", "..data"},
		{"..data/policy.yaml", "policy.yaml"},
	} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	h := newHarnessAt(t, filepath.Join(dir, "policy.yaml"), Options{Debounce: 10 * time.Millisecond})
	c1 := h.admit(t)
	h.refused(t)

	// What the kubelet does: a new version directory, a new symlink, renamed
	// over ..data, the old version removed.
	version("..2026_01_01_00_01_00.2", capDoc(3))
	if err := os.Symlink("..2026_01_01_00_01_00.2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	h.waitReloads(t, 1)
	conns := []*websocket.Conn{c1, h.admit(t), h.admit(t)}
	h.refused(t)
	h.closeAll(t, conns...)
}
