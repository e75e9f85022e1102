// Command loadtest is a load and attack generator for WebSocket servers
// guarded by wslimit (or any other limiter): connection floods, handshake
// rate floods, X-Forwarded-For rotation through a trusted proxy, and one
// bearer token reused by many connections. It prints a progress line while
// it runs and a summary of admitted and refused handshakes, by status or
// close code and by rule, with handshake latency percentiles.
//
//	go run ./examples/loadtest -url ws://127.0.0.1:8080/ws -mode conn-flood -n 20
//
// Point it only at servers you own. It refuses targets that are not
// loopback (127.0.0.0/8, ::1) unless -i-own-this-server is given, and every
// run is bounded in attempts (-n), time (-duration, -hold) and concurrency
// (-c), under hard caps no flag can raise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

// headerFlags collects repeated -H "Name: value" flags.
type headerFlags http.Header

func (h headerFlags) String() string { return "" }

func (h headerFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t") {
		return fmt.Errorf("want \"Name: value\", got %q", s)
	}
	http.Header(h).Add(name, strings.TrimSpace(value))
	return nil
}

func cli(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	headers := headerFlags{}
	var (
		tokenEnv    string
		closeCodes  string
		asJSON      bool
		quiet       bool
		allowRemote bool
	)
	fs.StringVar(&cfg.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL (ws:// or wss://); loopback unless -i-own-this-server")
	fs.StringVar(&cfg.Mode, "mode", "", "conn-flood | rate-flood | rotate-xff | token-reuse | reconnect-loop | token-spray | addr-churn (required)")
	fs.IntVar(&cfg.N, "n", defaultN, fmt.Sprintf("most handshake attempts (at most %d)", MaxAttempts))
	fs.IntVar(&cfg.Concurrency, "c", defaultConcurrency, fmt.Sprintf("handshakes in flight at once (at most %d)", MaxConcurrency))
	fs.Float64Var(&cfg.Rate, "rate", 0, fmt.Sprintf("attempts per second, 0 = as fast as allowed (at most %d)", MaxRate))
	fs.DurationVar(&cfg.Duration, "duration", defaultDuration, fmt.Sprintf("bound on the attempt phase (at most %s)", MaxDuration))
	fs.DurationVar(&cfg.Hold, "hold", defaultHold, fmt.Sprintf("conn-flood, token-reuse: keep admitted connections open this long after the last attempt (at most %s)", MaxHold))
	fs.DurationVar(&cfg.Settle, "settle", defaultSettle, "wait this long after an upgrade for a refusal by close (1008/1013) or the server's close reply; 0: don't wait")
	fs.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", defaultHandshake, "bound on one handshake")
	fs.StringVar(&cfg.XFFPrefix, "xff-prefix", "", "send X-Forwarded-For with addresses of this prefix, one per attempt (required by rotate-xff; allowed in every mode)")
	fs.BoolVar(&cfg.XFFRandom, "xff-random", false, "random addresses of -xff-prefix instead of sequential ones")
	fs.StringVar(&cfg.Token, "token", "", "bearer token (token-reuse; allowed in every mode); prefer -token-env: command lines are visible to other users")
	fs.StringVar(&tokenEnv, "token-env", "", "read the bearer token from this environment variable")
	fs.StringVar(&cfg.TokenIn, "token-in", "header", "where the token goes: header (Authorization: Bearer), subprotocol ([SUBPROTOCOL, bearer.TOKEN]) or cookie:NAME")
	fs.StringVar(&cfg.Subprotocol, "subprotocol", "chat", "the application subprotocol offered beside bearer.TOKEN with -token-in subprotocol")
	fs.StringVar(&cfg.Origin, "origin", "", "Origin header (a server in reject mode auto answers requests with Origin by close)")
	fs.Var(headers, "H", "extra request header \"Name: value\" (repeatable)")
	fs.StringVar(&closeCodes, "reject-close-codes", "1008,1013", "close codes that, within -settle of the upgrade, count as a refusal")
	fs.BoolVar(&asJSON, "json", false, "print the summary as JSON (the progress line goes to stderr)")
	fs.BoolVar(&quiet, "quiet", false, "no progress line")
	fs.BoolVar(&allowRemote, "i-own-this-server", false, "allow a target that is not loopback: only for a server you own and may load")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./examples/loadtest -url ws://127.0.0.1:8080/ws -mode MODE [flags]\n\n")
		fmt.Fprintf(stderr, "A load and attack generator for WebSocket handshake limits. Point it only at\nservers you own; targets other than loopback need -i-own-this-server.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	for name, v := range map[string]bool{"-n": cfg.N == 0, "-c": cfg.Concurrency == 0, "-duration": cfg.Duration == 0, "-handshake-timeout": cfg.HandshakeTimeout == 0} {
		if v {
			fmt.Fprintf(stderr, "loadtest: %s must be positive\n", name)
			return 2
		}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loadtest: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if tokenEnv != "" {
		if cfg.Token != "" {
			fmt.Fprintln(stderr, "loadtest: give -token or -token-env, not both")
			return 2
		}
		cfg.Token = os.Getenv(tokenEnv)
		if cfg.Token == "" {
			fmt.Fprintf(stderr, "loadtest: -token-env %s: the variable is empty or unset\n", tokenEnv)
			return 2
		}
	}
	codes, err := parseCodes(closeCodes)
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: -reject-close-codes: %v\n", err)
		return 2
	}
	cfg.RejectCloseCodes = codes
	cfg.Headers = http.Header(headers)
	// Flags given as 0 mean 0 here, not the defaults.
	cfg.Hold = orNegative(cfg.Hold)
	cfg.Settle = orNegative(cfg.Settle)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if tgt, err := parseTarget(ctx, cfg.URL); err == nil && !tgt.loopback {
		fmt.Fprintf(stderr, "WARNING: %s is not a loopback address. This tool floods a server with\n"+
			"handshakes: run it only against a server you own or are authorized to load.\n", tgt.host)
		if !allowRemote {
			fmt.Fprintln(stderr, "loadtest: refusing a target that is not loopback without -i-own-this-server")
			return 2
		}
		cfg.AllowNonLoopback = true
	}

	if !quiet {
		cfg.Progress = stdout
		if asJSON {
			cfg.Progress = stderr
		}
		cfg.ProgressInPlace = isTerminal(cfg.Progress)
	}
	s, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return 1
	}
	if asJSON {
		err = s.WriteJSON(stdout)
	} else {
		err = s.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return 1
	}
	if s.Interrupted {
		return 130
	}
	return 0
}

// orNegative maps an explicit 0 to a negative value, which Config reads as
// "none" (its zero value means the default).
func orNegative(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func parseCodes(s string) ([]int, error) {
	codes := []int{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		c, err := strconv.Atoi(f)
		if err != nil || c < 1000 || c > 4999 {
			return nil, fmt.Errorf("%q is not a close code (1000-4999)", f)
		}
		codes = append(codes, c)
	}
	return codes, nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
