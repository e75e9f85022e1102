package main

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAutoCapsFromRLIMIT runs the demo with its embedded policy (global
// rule and listener.global at auto, fd_reserve 64, 64 KiB per connection)
// under prlimit: the caps are RLIMIT_NOFILE minus 64, or GOMEMLIMIT / 64
// KiB when that is smaller, and the start-up log and /inspect say so.
func TestAutoCapsFromRLIMIT(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("no prlimit on PATH (util-linux)")
	}
	bin := buildDemo(t, t.TempDir())
	tests := []struct {
		name    string
		wrap    []string
		want    int
		boundBy string
	}{
		{"nofile 300", []string{prlimit, "--nofile=300:300", "--"}, 300 - 64, "nofile"},
		// 32 MiB / 64 KiB = 512, below 1000 - 64.
		{"GOMEMLIMIT 32MiB", []string{prlimit, "--nofile=1000:1000", "--", "env", "GOMEMLIMIT=32MiB"}, 512, "memory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			admin := freeAddr(t)
			p := startDemoWith(t, tt.wrap, bin, 0, "-admin", admin)
			out := p.out.String()
			for _, s := range []string{
				"wslimit: connection caps from capacity",
				"connections=" + strconv.Itoa(tt.want),
				"bound_by=" + tt.boundBy,
				`fields="[rules[2].connections listener.global]"`,
				"wslimit listener caps",
				"global=" + strconv.Itoa(tt.want),
			} {
				if !strings.Contains(out, s) {
					t.Errorf("start-up log lacks %q:\n%s", s, tail(out, 3000))
				}
			}
			in := inspect(t, admin)
			if r := in.Rules[2]; r.Name != "everyone" || r.Connections != tt.want || !r.ConnectionsAuto {
				t.Errorf("/inspect rule %+v, want everyone with %d connections, auto", r, tt.want)
			}
			if in.Pressure == nil || len(in.Pressure.Signals) != 1 || in.Pressure.Signals[0].Name != "fds" {
				t.Errorf("/inspect pressure = %+v, want the fds signal", in.Pressure)
			}
		})
	}
}

// inspection is the part of /inspect the test reads.
type inspection struct {
	Rules []struct {
		Name            string `json:"name"`
		Connections     int    `json:"connections"`
		ConnectionsAuto bool   `json:"connections_auto"`
	} `json:"rules"`
	Pressure *struct {
		Samples int `json:"samples"`
		Signals []struct {
			Name string `json:"name"`
		} `json:"signals"`
	} `json:"pressure"`
}

func inspect(t *testing.T, admin string) inspection {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	var in inspection
	// The monitor samples once a second: wait for the first sample.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := client.Get("http://" + admin + "/inspect")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&in)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(in.Rules) != 3 {
			t.Fatalf("/inspect lists %d rules, want 3", len(in.Rules))
		}
		if (in.Pressure != nil && in.Pressure.Samples > 0) || time.Now().After(deadline) {
			return in
		}
	}
}
