// Command chart draws the bar charts of docs/benchmarks.md from `go test
// -bench` output. It reads one or more output files (concatenated runs of
// several packages are fine), takes the median of every benchmark's
// samples, and writes PNGs:
//
//	handshakes.png  end-to-end connections per second, guarded vs unguarded (ws)
//	admission.png   admission + release latency by policy size (policy)
//	redis.png       Redis admission vs PING on the same client (policy/redisstore)
//
// A chart whose benchmarks are absent from the input is skipped. Usage:
//
//	go run ./docs/chart -in bench.txt -out docs/
//
// It uses only the standard library; labels are drawn with a built-in 5x7
// bitmap font.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	in := flag.String("in", "bench.txt", "benchmark output file(s), comma-separated")
	out := flag.String("out", "docs/", "directory for the PNGs")
	flag.Parse()
	rs := newResults()
	for _, name := range strings.Split(*in, ",") {
		f, err := os.Open(name)
		if err != nil {
			fatal(err)
		}
		err = rs.parse(f)
		f.Close()
		if err != nil {
			fatal(fmt.Errorf("%s: %w", name, err))
		}
	}
	wrote := 0
	for _, c := range []struct {
		file  string
		build func(*results) (*chart, bool)
	}{
		{"handshakes.png", handshakeChart},
		{"admission.png", admissionChart},
		{"redis.png", redisChart},
	} {
		ch, ok := c.build(rs)
		if !ok {
			fmt.Fprintf(os.Stderr, "chart: %s: benchmarks not in the input, skipped\n", c.file)
			continue
		}
		path := filepath.Join(*out, c.file)
		if err := writePNG(path, ch.render()); err != nil {
			fatal(err)
		}
		fmt.Println("wrote", path)
		for _, l := range ch.summary {
			fmt.Println("  " + l)
		}
		wrote++
	}
	if wrote == 0 {
		fatal(errors.New("no chart: the input holds none of the benchmarks"))
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "chart:", err)
	os.Exit(1)
}

// results holds the samples of every benchmark, by package and name.
type results struct {
	samples map[string]map[string][]float64 // "pkg name" -> unit -> values
	order   []string                        // "pkg name" in order of first appearance
	cpu     string
	procs   string
}

func newResults() *results { return &results{samples: map[string]map[string][]float64{}} }

var procsSuffix = regexp.MustCompile(`-(\d+)$`)

// parse reads `go test -bench` output: "pkg:" and "cpu:" lines, and
// result lines "BenchmarkName-P  N  v unit  v unit ...".
func (rs *results) parse(r io.Reader) error {
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimSpace(strings.TrimPrefix(line, "pkg: "))
			continue
		case strings.HasPrefix(line, "cpu: "):
			rs.cpu = strings.TrimSpace(strings.TrimPrefix(line, "cpu: "))
			continue
		case !strings.HasPrefix(line, "Benchmark"):
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue // a benchmark's log line, or a failure
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := f[0]
		if m := procsSuffix.FindStringSubmatch(name); m != nil {
			name = strings.TrimSuffix(name, m[0])
			rs.procs = m[1]
		}
		key := pkg + " " + name
		if rs.samples[key] == nil {
			rs.samples[key] = map[string][]float64{}
			rs.order = append(rs.order, key)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("bad value %q in %q", f[i], line)
			}
			rs.samples[key][f[i+1]] = append(rs.samples[key][f[i+1]], v)
		}
	}
	return sc.Err()
}

// find returns the samples of benchmark name in the package whose import
// path ends in "/"+pkg.
func (rs *results) find(pkg, name, unit string) []float64 {
	for _, key := range rs.order {
		p, n, _ := strings.Cut(key, " ")
		if n == name && strings.HasSuffix(p, "/"+pkg) {
			return rs.samples[key][unit]
		}
	}
	return nil
}

// median returns the median of the samples of a benchmark and their count.
func (rs *results) median(pkg, name, unit string) (float64, int) {
	vs := rs.find(pkg, name, unit)
	return median(vs), len(vs)
}

// fastHandoff is the largest cache-line round trip (handoff-ns) of a run
// in the machine's fast mode; the slow mode reads about 350 ns
// (docs/benchmarks.md).
const fastHandoff = 150

// fastMode returns the median ns/op of the runs of a parallel benchmark
// that reported a handoff-ns of at most fastHandoff, and their count;
// false when the benchmark reports no handoff-ns.
func (rs *results) fastMode(pkg, name string) (float64, int, bool) {
	ns, hs := rs.find(pkg, name, "ns/op"), rs.find(pkg, name, "handoff-ns")
	if len(hs) == 0 || len(hs) != len(ns) {
		return 0, 0, false
	}
	var fast []float64
	for i, h := range hs {
		if h <= fastHandoff {
			fast = append(fast, ns[i])
		}
	}
	return median(fast), len(fast), true
}

// median returns the median of vs, 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	vs = slices.Clone(vs)
	slices.Sort(vs)
	m := vs[len(vs)/2]
	if len(vs)%2 == 0 {
		m = (vs[len(vs)/2-1] + m) / 2
	}
	return m
}

// pairedRatio returns the median over i of the i-th sample of b divided
// by the i-th sample of a: the ratio within each round when the input
// holds rounds that ran a and b one after the other.
func (rs *results) pairedRatio(pkg, a, b, unit string) float64 {
	as, bs := rs.find(pkg, a, unit), rs.find(pkg, b, unit)
	n := min(len(as), len(bs))
	if n == 0 {
		return 0
	}
	ratios := make([]float64, n)
	for i := range n {
		ratios[i] = bs[i] / as[i]
	}
	return median(ratios)
}

// names returns the benchmark names in pkg starting with prefix, in order
// of first appearance.
func (rs *results) names(pkg, prefix string) []string {
	var out []string
	for _, key := range rs.order {
		p, n, _ := strings.Cut(key, " ")
		if strings.HasSuffix(p, "/"+pkg) && strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// machine describes where the figures come from, for a footer.
func (rs *results) machine(runs int) string {
	s := fmt.Sprintf("MEDIANS OF %d RUNS", runs)
	if rs.cpu != "" {
		s += ", " + rs.cpu
	}
	if rs.procs != "" {
		s += ", GOMAXPROCS " + rs.procs
	}
	return s
}

var (
	colUnguarded = color.RGBA{0x9a, 0xa5, 0xb1, 0xff}
	colGuarded   = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	colSerial    = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	colParallel  = color.RGBA{0xff, 0x7f, 0x0e, 0xff}
	colPing      = color.RGBA{0x9a, 0xa5, 0xb1, 0xff}
	colAdmit     = color.RGBA{0x2c, 0xa0, 0x2c, 0xff}
	colPair      = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
)

func handshakeChart(rs *results) (*chart, bool) {
	ch := &chart{
		title: "WEBSOCKET CONNECTIONS/S, GUARDED VS UNGUARDED",
		sub:   "GORILLA ECHO SERVER OVER LOOPBACK: DIAL + ONE ECHO + CLOSE. HIGHER IS BETTER",
		legend: []legend{
			{"UNGUARDED (WEBSOCKET.UPGRADER)", colUnguarded},
			{"GUARDED (WS.GUARD, 3 RULES)", colGuarded},
		},
	}
	runs := 0
	for _, g := range []struct{ bench, title string }{
		{"BenchmarkHandshake", "ONE CLIENT, SEPARATE RUNS"},
		{"BenchmarkHandshakeParallel", "8 CLIENTS AT ONCE, SEPARATE RUNS"},
	} {
		u, nu := rs.median("ws", g.bench+"/unguarded", "handshakes/s")
		gd, ng := rs.median("ws", g.bench+"/guarded", "handshakes/s")
		if nu == 0 || ng == 0 {
			continue
		}
		runs = max(runs, nu, ng)
		ratio := gd / u
		ch.summary = append(ch.summary, fmt.Sprintf("%s: unguarded %.0f/s, guarded %.0f/s (medians of %d, %d); guarded/unguarded %.3f, median of per-round ratios %.3f",
			g.bench, u, gd, nu, ng, ratio, rs.pairedRatio("ws", g.bench+"/unguarded", g.bench+"/guarded", "handshakes/s")))
		ch.groups = append(ch.groups, group{
			title: fmt.Sprintf("%s: GUARDED/UNGUARDED = %.3f", g.title, ratio),
			bars: []bar{
				{"UNGUARDED", u, colUnguarded, thousands(u) + "/S"},
				{"GUARDED", gd, colGuarded, thousands(gd) + "/S"},
			},
		})
	}
	// The alternating benchmark times both servers connection by
	// connection in each run: its ratio is the paired one.
	const alt = "BenchmarkHandshakeAlternating"
	un, nu := rs.median("ws", alt, "unguarded-ns/conn")
	gn, ng := rs.median("ws", alt, "guarded-ns/conn")
	r, nr := rs.median("ws", alt, "guarded/unguarded")
	if nu > 0 && ng > 0 && nr > 0 {
		runs = max(runs, nu, ng, nr)
		u, gd := 1e9/un, 1e9/gn
		ch.groups = append(ch.groups, group{
			title: fmt.Sprintf("ONE CLIENT, SERVERS ALTERNATING (PAIRED): GUARDED/UNGUARDED = %.3f", r),
			bars: []bar{
				{"UNGUARDED", u, colUnguarded, thousands(u) + "/S"},
				{"GUARDED", gd, colGuarded, thousands(gd) + "/S"},
			},
		})
		ch.summary = append(ch.summary, fmt.Sprintf("%s: unguarded %.0f ns/conn, guarded %.0f ns/conn (medians of %d, %d); median of in-run guarded/unguarded %.3f (of %d)",
			alt, un, gn, nu, ng, r, nr))
	}
	ch.footer = []string{
		"RATIOS: OF THE MEDIANS; PAIRED: MEDIAN OF THE IN-RUN RATIOS",
		"TARGET: GUARDED/UNGUARDED >= 0.97",
		rs.machine(runs),
	}
	return ch, len(ch.groups) > 0
}

// admissionLabels names the policies of the policy package's benchmarks.
var admissionLabels = map[string]string{
	"1rule":      "1 RULE (IP RATE)",
	"3rules":     "3 RULES (IP, SUBNET, GLOBAL)",
	"3rules+jwt": "3 RULES + JWT SUBJECT (CACHED)",
}

var (
	colBaseSerial   = color.RGBA{0x9a, 0xa5, 0xb1, 0xff}
	colBaseParallel = color.RGBA{0xc9, 0xcf, 0xd6, 0xff}
)

func admissionChart(rs *results) (*chart, bool) {
	ch := &chart{
		title: "ADMISSION + RELEASE, NS PER HANDSHAKE, BY POLICY",
		sub:   "IN-MEMORY STORE VS MAP+MUTEX, 100,000 ADDRESSES. LOWER IS BETTER",
		legend: []legend{
			{"SERIAL", colSerial},
			{"PARALLEL", colParallel},
			{"BASELINE SERIAL", colBaseSerial},
			{"BASELINE PARALLEL", colBaseParallel},
		},
	}
	runs := 0
	seen := map[string]bool{}
	for _, n := range rs.names("policy", "BenchmarkAdmitRelease/") {
		pol, _, ok := strings.Cut(strings.TrimPrefix(n, "BenchmarkAdmitRelease/"), "/")
		if !ok || seen[pol] {
			continue
		}
		seen[pol] = true
		label := admissionLabels[pol]
		if label == "" {
			label = strings.ToUpper(pol)
		}
		var bars []bar
		for _, m := range []struct {
			impl, mode string
			col        color.RGBA
		}{
			{"", "serial", colSerial}, {"", "parallel", colParallel},
			{"baseline/", "serial", colBaseSerial}, {"baseline/", "parallel", colBaseParallel},
		} {
			name := "BenchmarkAdmitRelease/" + pol + "/" + m.impl + m.mode
			v, k := rs.median("policy", name, "ns/op")
			if k == 0 {
				continue
			}
			runs = max(runs, k)
			text := thousands(v) + " NS"
			if m.impl == "" {
				if base, kb := rs.median("policy", "BenchmarkAdmitRelease/"+pol+"/baseline/"+m.mode, "ns/op"); kb > 0 {
					if base >= v {
						text += fmt.Sprintf(" (%.2fX FASTER THAN BASELINE)", base/v)
					} else {
						text += fmt.Sprintf(" (%.2fX SLOWER THAN BASELINE)", v/base)
					}
				}
				if m.mode == "parallel" {
					if ser, ks := rs.median("policy", "BenchmarkAdmitRelease/"+pol+"/serial", "ns/op"); ks > 0 {
						ch.summary = append(ch.summary, fmt.Sprintf("AdmitRelease/%s: parallel throughput %.2fx serial", pol, ser/v))
					}
				}
			}
			if fast, n, ok := rs.fastMode("policy", name); ok && n > 0 && n < k {
				text += fmt.Sprintf("; FAST-HANDOFF RUNS (%d): %s NS", n, thousands(fast))
			}
			allocs, _ := rs.median("policy", name, "allocs/op")
			bytes, _ := rs.median("policy", name, "B/op")
			bars = append(bars, bar{"", v, m.col, text})
			ch.summary = append(ch.summary, fmt.Sprintf("AdmitRelease/%s/%s%s: %.0f ns/op, %.0f B/op, %.0f allocs/op (median of %d)", pol, m.impl, m.mode, v, bytes, allocs, k))
			if fast, n, ok := rs.fastMode("policy", name); ok {
				ch.summary = append(ch.summary, fmt.Sprintf("  in the fast handoff mode (handoff-ns <= %d): %.0f ns/op (median of %d)", fastHandoff, fast, n))
			}
		}
		if len(bars) > 0 {
			ch.groups = append(ch.groups, group{title: label, bars: bars})
		}
	}
	if len(ch.groups) == 0 {
		return nil, false
	}
	ch.footer = []string{"TARGET: 3 RULES <= 400 NS SERIAL, <= 2 ALLOCS; PARALLEL >= 1.7X SERIAL", "FAST-HANDOFF RUNS: PARALLEL RUNS WITH A CORE-TO-CORE ROUND TRIP <= 150 NS", rs.machine(runs)}
	return ch, true
}

func redisChart(rs *results) (*chart, bool) {
	ch := &chart{
		title: "REDIS STORE: ADMISSION VS PING ON THE SAME CLIENT",
		sub:   "LOOPBACK REDIS-SERVER, EVERY RULE A CAP + A BUCKET. US PER OP, LOWER IS BETTER",
		legend: []legend{
			{"PING (1 ROUND TRIP)", colPing},
			{"ADMIT (1 ROUND TRIP)", colAdmit},
			{"ADMIT + RELEASE (2 ROUND TRIPS)", colPair},
		},
	}
	runs := 0
	for _, g := range []struct{ mode, title string }{{"serial", "SERIAL"}, {"parallel=16", "16 GOROUTINES"}} {
		base := "BenchmarkAdmitVsPing/" + g.mode + "/"
		ping, np := rs.median("policy/redisstore", base+"ping", "ns/op")
		if np == 0 {
			continue
		}
		runs = max(runs, np)
		bars := []bar{{"PING", ping / 1e3, colPing, fmt.Sprintf("%.1f US", ping/1e3)}}
		for _, s := range []struct{ sub, label string }{
			{"rules=1/admit", "1 RULE, ADMIT"}, {"rules=4/admit", "4 RULES, ADMIT"},
			{"rules=1/admit+release", "1 RULE, ADMIT+RELEASE"}, {"rules=4/admit+release", "4 RULES, ADMIT+RELEASE"},
		} {
			v, k := rs.median("policy/redisstore", base+s.sub, "ns/op")
			if k == 0 {
				continue
			}
			col := colAdmit
			if strings.HasSuffix(s.sub, "+release") {
				col = colPair
			}
			bars = append(bars, bar{s.label, v / 1e3, col, fmt.Sprintf("%.1f US = %.2f PINGS", v/1e3, v/ping)})
			ch.summary = append(ch.summary, fmt.Sprintf("%s%s: %.1f us (median of %d) = %.2f x ping %.1f us; median of in-run ping-ratio %.2f",
				base, s.sub, v/1e3, k, v/ping, ping/1e3, median(rs.find("policy/redisstore", base+s.sub, "ping-ratio"))))
		}
		ch.groups = append(ch.groups, group{title: g.title, bars: bars})
	}
	ch.footer = []string{"TARGET: 4-RULE ADMIT <= 1.3 PINGS SERIAL, <= 1.1 PINGS AT 16 GOROUTINES", rs.machine(runs)}
	return ch, len(ch.groups) > 0
}

// thousands formats v rounded to an integer with comma separators.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// A chart is a horizontal bar chart: groups of labelled bars sharing one
// scale.
type chart struct {
	title, sub string
	legend     []legend
	groups     []group
	footer     []string
	summary    []string // printed: the figures behind the chart
}

type legend struct {
	text string
	col  color.RGBA
}

type group struct {
	title string
	bars  []bar
}

type bar struct {
	label string
	value float64
	col   color.RGBA
	text  string // drawn after the bar
}

// Layout, in pixels.
const (
	width    = 1000
	margin   = 24
	scale    = 2 // font scale of labels
	barH     = 24
	rowGap   = 8
	groupGap = 18
)

var (
	colBG   = color.RGBA{0xff, 0xff, 0xff, 0xff}
	colText = color.RGBA{0x22, 0x22, 0x22, 0xff}
	colMute = color.RGBA{0x66, 0x66, 0x66, 0xff}
	colAxis = color.RGBA{0xbb, 0xbb, 0xbb, 0xff}
)

func (ch *chart) render() *image.RGBA {
	lineH := textHeight(scale) + 8
	labelW, textW := 0, 0
	maxV := 0.0
	for _, g := range ch.groups {
		for _, b := range g.bars {
			labelW = max(labelW, textWidth(b.label, scale))
			textW = max(textW, textWidth(b.text, scale))
			maxV = max(maxV, b.value)
		}
	}
	height := margin + textHeight(3) + 12 + lineH + 6 // title, subtitle
	height += lineH + 10                              // legend
	for _, g := range ch.groups {
		if g.title != "" {
			height += lineH
		}
		height += len(g.bars)*(barH+rowGap) + groupGap
	}
	height += len(ch.footer)*lineH + margin

	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)
	y := margin
	drawText(img, margin, y, ch.title, 3, colText)
	y += textHeight(3) + 12
	drawText(img, margin, y, ch.sub, scale, colMute)
	y += lineH + 6
	x := margin
	for _, l := range ch.legend {
		fill(img, image.Rect(x, y, x+textHeight(scale), y+textHeight(scale)), l.col)
		x += textHeight(scale) + 8
		drawText(img, x, y, l.text, scale, colText)
		x += textWidth(l.text, scale) + 28
	}
	y += lineH + 10

	barX := margin + labelW + 12
	barMax := width - margin - textW - 12 - barX
	for _, g := range ch.groups {
		if g.title != "" {
			drawText(img, margin, y, g.title, scale, colText)
			y += lineH
		}
		fill(img, image.Rect(barX-1, y-rowGap/2, barX, y+len(g.bars)*(barH+rowGap)-rowGap/2), colAxis)
		for _, b := range g.bars {
			ty := y + (barH-textHeight(scale))/2
			drawText(img, barX-12-textWidth(b.label, scale), ty, b.label, scale, colText)
			n := 0
			if maxV > 0 {
				n = int(b.value / maxV * float64(barMax))
			}
			fill(img, image.Rect(barX, y, barX+max(n, 1), y+barH), b.col)
			drawText(img, barX+n+10, ty, b.text, scale, colText)
			y += barH + rowGap
		}
		y += groupGap
	}
	for _, f := range ch.footer {
		drawText(img, margin, y, f, scale, colMute)
		y += lineH
	}
	return img
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

func writePNG(path string, img image.Image) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := enc.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
