# shellcheck shell=bash
# Redis for the shared-store tests. Meant to be SOURCED by .ci/run (or by a
# developer's shell):
#
#   source .ci/redis.sh     # installs redis-server if missing, starts it
#   go test ./policy/redisstore
#   wslimit_stop_redis
#
# It starts redis-server on a free loopback port with persistence off,
# waits until it answers PING, and exports
#   WSLIMIT_REDIS_ADDR=127.0.0.1:<port>   where the tests find it
#   WSLIMIT_REQUIRE_REDIS=1               tests fail instead of skipping
# wslimit_stop_redis stops it; an EXIT trap calls it unless the sourcing
# shell already has one (.ci/run sets its own, which calls it).
#
# Tests that stop, kill or restart Redis start their own server from PATH;
# they never touch this one.

wslimit_redis_dir=""
wslimit_redis_pidfile=""

# wslimit_stop_redis stops the server started by this script, if any.
wslimit_stop_redis() {
	if [ -n "${wslimit_redis_pidfile:-}" ] && [ -f "$wslimit_redis_pidfile" ]; then
		local pid
		pid="$(cat "$wslimit_redis_pidfile" 2>/dev/null || true)"
		if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			local _i
			for _i in $(seq 1 50); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
	if [ -n "${wslimit_redis_dir:-}" ]; then
		rm -rf "$wslimit_redis_dir"
	fi
	wslimit_redis_dir=""
	wslimit_redis_pidfile=""
	unset WSLIMIT_REDIS_ADDR
}

wslimit_start_redis() {
	if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
		echo "== redis: installing redis-server"
		local sudo=""
		[ "$(id -u)" -eq 0 ] || sudo="sudo"
		$sudo apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
	fi

	wslimit_redis_dir="$(mktemp -d "${TMPDIR:-/tmp}/wslimit-redis.XXXXXX")"
	wslimit_redis_pidfile="$wslimit_redis_dir/redis.pid"

	# A free loopback port: a random one nothing answers on. Should another
	# process take it first, redis-server fails and we try the next.
	local port _i
	for _i in 1 2 3 4 5; do
		port=$(( (RANDOM % 25000) + 30000 ))
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			continue # in use
		fi
		rm -f "$wslimit_redis_pidfile"
		redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
			--daemonize yes --pidfile "$wslimit_redis_pidfile" \
			--dir "$wslimit_redis_dir" --logfile "$wslimit_redis_dir/redis.log" || continue
		for _i in $(seq 1 100); do
			if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" = "PONG" ]; then
				export WSLIMIT_REDIS_ADDR="127.0.0.1:$port"
				export WSLIMIT_REQUIRE_REDIS=1
				echo "== redis: $(redis-server --version | cut -d' ' -f1-3) on $WSLIMIT_REDIS_ADDR"
				return 0
			fi
			sleep 0.1
		done
	done
	echo "redis-server did not start on a free loopback port:" >&2
	cat "$wslimit_redis_dir/redis.log" >&2 2>/dev/null || true
	wslimit_stop_redis
	return 1
}

wslimit_start_redis
if [ -z "$(trap -p EXIT)" ]; then
	trap 'wslimit_stop_redis' EXIT
fi
