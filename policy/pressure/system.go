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
// where unknown). Linux 6.2 and later report the count as the size of
// /proc/self/fd, one stat call whatever the count; elsewhere the
// descriptor directory is listed in batches (memory stays small, but the
// cost grows with the count: about 10 ms for 10,000 descriptors on Linux,
// which is why it runs on the sampling goroutine only).
func (s *systemReader) fds() (int, int64) {
	limit := int64(min(capacity.ReadSystem().NoFile, math.MaxInt64))
	if fi, err := os.Stat(fdDirs[0]); err == nil && fi.Size() > 0 {
		return int(fi.Size()), limit
	}
	return listFDs(), limit
}

// listFDs counts the entries of the first descriptor directory that
// opens; -1 when none does.
func listFDs() int {
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
			return n - 1 // the directory's own descriptor
		}
	}
	return -1
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
