package capacity

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
)

func TestCompute(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		sys     System
		want    int
		boundBy string
	}{
		{"default reserve", Config{}, System{NoFile: 1024}, 1024 - DefaultReserve, "nofile"},
		{"own reserve", Config{FDReserve: 100}, System{NoFile: 256}, 156, "nofile"},
		{"no memory limit", Config{MemoryPerConnection: 1 << 20}, System{NoFile: 1 << 20, MemoryLimit: math.MaxInt64}, 1<<20 - DefaultReserve, "nofile"},
		{"memory bounds", Config{MemoryPerConnection: 64 << 10}, System{NoFile: 1 << 20, MemoryLimit: 512 << 20}, 8192, "memory"},
		{"memory above nofile", Config{MemoryPerConnection: 1024}, System{NoFile: 1000, MemoryLimit: 1 << 30}, 936, "nofile"},
		{"memory below one", Config{MemoryPerConnection: 1 << 30}, System{NoFile: 1000, MemoryLimit: 1 << 20}, 1, "memory"},
		{"memory without estimate", Config{}, System{NoFile: 1000, MemoryLimit: 1 << 20}, 936, "nofile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Compute(tt.cfg, tt.sys)
			if err != nil {
				t.Fatal(err)
			}
			if r.Conns != tt.want || r.BoundBy != tt.boundBy {
				t.Errorf("Compute = %d bound by %s, want %d by %s (%+v)", r.Conns, r.BoundBy, tt.want, tt.boundBy, r)
			}
		})
	}
}

func TestComputeErrors(t *testing.T) {
	if _, err := Compute(Config{}, System{}); !errors.Is(err, ErrNoLimit) {
		t.Errorf("unknown limit: err = %v, want ErrNoLimit", err)
	}
	if _, err := Compute(Config{}, System{NoFile: 64}); err == nil {
		t.Error("limit equal to the reserve: no error")
	}
	if _, err := Compute(Config{FDReserve: -1}, System{NoFile: 640}); err == nil {
		t.Error("negative reserve: no error")
	}
}

func TestCapText(t *testing.T) {
	var c Cap
	if err := c.UnmarshalText([]byte("auto")); err != nil || c != Auto {
		t.Errorf("auto: %v %v", c, err)
	}
	if err := c.UnmarshalText([]byte("12")); err != nil || c != 12 {
		t.Errorf("12: %v %v", c, err)
	}
	if err := c.UnmarshalText([]byte("many")); err == nil {
		t.Error("many: no error")
	}
	b, _ := json.Marshal(struct{ A, B Cap }{Auto, 7})
	if string(b) != `{"A":"auto","B":7}` {
		t.Errorf("json = %s", b)
	}
	var back struct{ A, B Cap }
	if err := json.Unmarshal(b, &back); err != nil || back.A != Auto || back.B != 7 {
		t.Errorf("json round trip: %+v %v", back, err)
	}
	if Auto.String() != "auto" || Cap(3).String() != "3" {
		t.Errorf("String: %s %s", Auto, Cap(3))
	}
}

// TestReadSystem reads this process's limit: on Unix, the soft
// RLIMIT_NOFILE is known and positive.
func TestReadSystem(t *testing.T) {
	if s := ReadSystem(); s.NoFile == 0 {
		t.Skip("no RLIMIT_NOFILE on this platform")
	}
	if _, err := Compute(Config{}, ReadSystem()); err != nil {
		t.Fatal(err)
	}
}
