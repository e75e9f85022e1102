#!/usr/bin/env bash
# Runs every benchmark quoted in docs/benchmarks.md, -count=10 unless noted,
# and writes the raw output to docs/bench.txt, the benchstat medians to
# docs/benchstat.txt and the charts to docs/*.png.
#
#   bash docs/bench.sh            # everything (about 25 minutes on 2 cores)
#   bash docs/bench.sh policy ws  # only the named groups
#
# Groups: policy, memory, buckets, concurrency, keys, identity, ws, messages, redis.
# Run it on an otherwise idle machine: the figures are only as quiet as the
# cores. The Redis group needs redis-server on PATH (or WSLIMIT_REDIS_ADDR).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${WSLIMIT_BENCH_OUT:-docs/bench.txt}
count=${WSLIMIT_BENCH_COUNT:-10}
benchstat=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(policy memory buckets concurrency keys identity ws messages redis)

bench() { # package, -bench regexp, extra flags...
	local pkg=$1 re=$2
	shift 2
	echo "== go test -run '^\$' -bench '$re' -benchmem $* $pkg" >&2
	go test -run '^$' -bench "$re" -benchmem "$@" "$pkg" | tee -a "$out"
}

: >"$out"
{
	echo "# wslimit benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)$(git diff --quiet -- . ':!docs/bench.txt' ':!docs/benchstat.txt' ':!docs/*.png' || echo '+dirty')"
	echo "# $(go version); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
} >>"$out"

for g in "${groups[@]}"; do
	case $g in
	policy)
		# The parallel figures depend on what one cache-line handoff between
		# the two cores costs, which depends on where the host put them: it
		# is measured before and after, so the run records the machine it
		# ran on.
		bench ./internal/handoff/ '^BenchmarkCacheLineHandoff$' -count 3
		bench ./policy/ '^BenchmarkAdmitRelease$' -count "$count" -benchtime 1s
		bench ./internal/handoff/ '^BenchmarkCacheLineHandoff$' -count 3
		bench ./policy/ '^BenchmarkRelease$' -count "$count" -benchtime 1s
		bench ./policy/ '^BenchmarkAdmitReleaseJWT$' -count "$count" -benchtime 1s
		;;
	memory)
		# Heap deltas over 1,000,000 keys are deterministic to a few bytes:
		# three runs each.
		bench ./buckets/ '^BenchmarkMemoryPerKey$' -count 3
		bench ./concurrency/ '^BenchmarkMemoryPerSlot$' -count 3
		bench ./policy/ '^BenchmarkMemoryPerConnection$' -count 3 -benchtime 1x
		;;
	buckets)
		bench ./buckets/ '^BenchmarkBucketVsBaseline$|^BenchmarkReserve' -count "$count" -benchtime 500ms
		;;
	concurrency)
		bench ./concurrency/ '^BenchmarkAcquireRelease$' -count "$count" -benchtime 500ms
		;;
	keys)
		bench ./keys/ . -count "$count" -benchtime 300ms
		;;
	identity)
		bench ./keys/identity/ . -count "$count" -benchtime 500ms
		;;
	ws)
		bench ./ws/ '^BenchmarkHandshakeAlternating$' -count "$count" -benchtime 5000x
		bench ./ws/ '^BenchmarkHandshake$|^BenchmarkHandshakeParallel$' -count "$count" -benchtime 1s
		echo "== go test -run '^TestHandshakeLatency\$' -v -wslimit.latency ./ws/" >&2
		go test -run '^TestHandshakeLatency$' -v -count 1 ./ws/ -wslimit.latency | grep -v '^=== ' | sed 's/^/# latency: /' | tee -a "$out"
		;;
	messages)
		# Issue 19: a message read bare, guarded, metered; one run of all
		# variants at a time, ten times, so that the machine's moods fall
		# on every variant alike.
		for _ in $(seq "$count"); do
			bench ./ws/ '^BenchmarkReadMessage$|^BenchmarkNextReader$' -count 1 -benchtime 1s
		done
		bench ./policy/messages/ '^BenchmarkCharge$' -count "$count" -benchtime 500ms
		;;
	redis)
		bench ./policy/redisstore/ '^BenchmarkAdmitVsPing$' -count "$count" -benchtime 1s
		# Redis's own time per admission (INFO commandstats on a private
		# server): five runs of 10,000 operations.
		bench ./policy/redisstore/ '^BenchmarkScriptCPU$' -count 5 -benchtime 10000x
		;;
	*)
		echo "unknown group $g" >&2
		exit 2
		;;
	esac
done

go run "$benchstat" "$out" >"${out%.txt}stat.txt" || true
go run ./docs/chart -in "$out" -out docs/
