package pressure

import (
	"io"
	"math"
	"os"
	"runtime/metrics"

	"github.com/wslimit/wslimit/policy/capacity"
)

// systemReader reads the fds and heap signals of this process. It is
// used under Monitor.mu only.
type systemReader struct {
	mem []metrics.Sample
}

func newSystemReader() *systemReader {
	return &systemReader{mem: []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/gc/gomemlimit:bytes"},
	}}
}

// fdDirs are where a process's open descriptors are listed, one entry
// each: Linux, then macOS and the BSDs.
var fdDirs = [...]string{"/proc/self/fd", "/dev/fd"}

// fds returns the number of open descriptors and RLIMIT_NOFILE (-1 and 0
// where unknown). It lists the descriptor directory in batches, so its
// memory stays small with many descriptors open; its cost grows with
// their number, which is why it runs on the sampling goroutine only.
func (s *systemReader) fds() (int, int64) {
	limit := int64(min(capacity.ReadSystem().NoFile, math.MaxInt64))
	for _, dir := range fdDirs {
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		n := 0
		for {
			names, err := f.Readdirnames(1024)
			n += len(names)
			if err == io.EOF || len(names) == 0 {
				break
			}
			if err != nil {
				n = -1
				break
			}
		}
		f.Close()
		if n > 0 {
			return n - 1, limit // the directory's own descriptor
		}
	}
	return -1, limit
}

// heap returns the memory GOMEMLIMIT counts and GOMEMLIMIT (0 when none
// is set).
func (s *systemReader) heap() (int64, int64) {
	metrics.Read(s.mem)
	var v [3]uint64
	for i, m := range s.mem {
		if m.Value.Kind() == metrics.KindUint64 {
			v[i] = m.Value.Uint64()
		}
	}
	used := int64(min(v[0]-min(v[1], v[0]), math.MaxInt64))
	limit := int64(min(v[2], math.MaxInt64))
	if limit == math.MaxInt64 {
		limit = 0
	}
	return used, limit
}
