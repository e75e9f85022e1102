package redisstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Tests run against a real redis-server. WSLIMIT_REDIS_ADDR (host:port)
// names a shared one (.ci/redis.sh sets it); without it the first test that
// needs Redis starts one from PATH for the whole test binary. Tests that
// stop or kill Redis always start their own server. With no redis-server on
// PATH the tests skip loudly, or fail when WSLIMIT_REQUIRE_REDIS=1.

// shared is the server started for this test binary when no address is
// given; TestMain stops it.
var shared struct {
	once sync.Once
	srv  *redisServer
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.shutdown()
	}
	os.Exit(code)
}

// noRedis skips (or, when Redis is required, fails) a test that lacks Redis.
func noRedis(t testing.TB, why string) {
	t.Helper()
	const hint = "*** install redis-server or set WSLIMIT_REDIS_ADDR=host:port ***\n\n"
	if os.Getenv("WSLIMIT_REQUIRE_REDIS") == "1" {
		t.Fatal("\n\n*** REDIS REQUIRED (WSLIMIT_REQUIRE_REDIS=1) BUT UNAVAILABLE: " + why + " ***\n" + hint)
	}
	t.Skip("\n\n*** REDIS TESTS SKIPPED: " + why + " ***\n" + hint +
		"*** (WSLIMIT_REQUIRE_REDIS=1 makes this a failure) ***\n\n")
}

// sharedAddr returns the address of the Redis shared by the tests.
func sharedAddr(t testing.TB) string {
	t.Helper()
	if a := os.Getenv("WSLIMIT_REDIS_ADDR"); a != "" {
		return a
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		noRedis(t, "no redis-server on PATH and WSLIMIT_REDIS_ADDR unset")
	}
	shared.once.Do(func() {
		shared.srv, shared.err = launch(0, "")
	})
	if shared.err != nil {
		t.Fatalf("starting redis-server: %v", shared.err)
	}
	return shared.srv.addr
}

// redisServer is a redis-server process this test binary started.
type redisServer struct {
	port     int
	addr     string
	dir      string
	password string
	extra    []string // more redis-server arguments
	conf     string   // a config file to start with (Sentinel)
	cmd      *exec.Cmd
	out      *bytes.Buffer
}

// ownServer starts a redis-server for one test on a free port, with a
// password unless it is empty, stopped at the end of the test.
func ownServer(t testing.TB, password string, extra ...string) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		noRedis(t, "no redis-server on PATH (this test runs a server of its own)")
	}
	s, err := launch(0, password, extra...)
	if err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	t.Cleanup(s.shutdown)
	return s
}

func launch(port int, password string, extra ...string) (*redisServer, error) {
	return launchWith(port, password, "", extra...)
}

// launchWith is launch with a config file; "sentinel monitor" lines make
// it a Sentinel.
func launchWith(port int, password, conf string, extra ...string) (*redisServer, error) {
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	dir, err := os.MkdirTemp("", "wslimit-redis-")
	if err != nil {
		return nil, err
	}
	s := &redisServer{port: port, addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir, password: password, extra: extra}
	if conf != "" {
		s.conf = filepath.Join(dir, "sentinel.conf")
		if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
			return nil, err
		}
	}
	return s, s.start()
}

func (s *redisServer) start() error {
	var args []string
	if s.conf != "" {
		args = append(args, s.conf, "--sentinel")
	}
	args = append(args, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir)
	if s.password != "" {
		args = append(args, "--requirepass", s.password)
	}
	args = append(args, s.extra...)
	s.out = new(bytes.Buffer)
	s.cmd = exec.Command("redis-server", args...)
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", s.addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.kill()
	return fmt.Errorf("redis-server on %s did not come up:\n%s", s.addr, s.out)
}

// kill ends the server at once (SIGKILL), as a crash would.
func (s *redisServer) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// restart starts the server again on the same port, empty.
func (s *redisServer) restart(t testing.TB) {
	t.Helper()
	s.kill()
	var err error
	for range 20 { // the port may take a moment to free up
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("restarting redis-server: %v", err)
}

// freeze stops the process (SIGSTOP): connections open but nothing answers,
// the worst case for timeouts. thaw resumes it.
func (s *redisServer) freeze() { _ = s.cmd.Process.Signal(syscall.SIGSTOP) }
func (s *redisServer) thaw()   { _ = s.cmd.Process.Signal(syscall.SIGCONT) }

func (s *redisServer) shutdown() {
	s.kill()
	os.RemoveAll(s.dir)
}

// countHook counts the commands and pipelines a client sends (each is one
// network round trip) and the connections it dials.
type countHook struct{ n, dials atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		h.dials.Add(1)
		return next(ctx, network, addr)
	}
}
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// newClient returns a client for addr with a round-trip counter, closed at
// the end of the test.
func newClient(t testing.TB, addr string) (*redis.Client, *countHook) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	h := &countHook{}
	c.AddHook(h)
	t.Cleanup(func() { c.Close() })
	return c, h
}

// uniquePrefix keeps tests that share a server apart.
func uniquePrefix(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "t:" + t.Name() + ":" + hex.EncodeToString(b[:]) + ":"
}
