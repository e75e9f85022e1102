# shellcheck shell=bash
# Chromium for the demo page's headless browser test
# (examples/server/browser_test.go). Meant to be SOURCED by .ci/run (or by
# a developer's shell):
#
#   source .ci/chromium.sh   # installs Debian's chromium if missing
#   go test -race -run TestBrowserDemo ./examples/server
#
# It installs the package chromium with apt-get when no chromium is on
# PATH (test tools cannot download their own browser here), and exports
#   WSLIMIT_REQUIRE_CHROMIUM=1          the browser test fails instead of skipping
#   WSLIMIT_ARTIFACTS=$PWD/artifacts    where the test saves its screenshot
#                                       (demo-page.png; artifacts/ is git-ignored)
# The test starts and stops its own browser; nothing here keeps running.

wslimit_setup_chromium() {
	if ! command -v chromium >/dev/null 2>&1; then
		echo "== chromium: installing Debian's chromium"
		local sudo=""
		[ "$(id -u)" -eq 0 ] || sudo="sudo"
		$sudo apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
	fi
	# The Debian launcher prints a harmless shell warning from its memory
	# check on some machines; keep the version line only.
	echo "== chromium: $(chromium --version 2>/dev/null | head -n1)"
	export WSLIMIT_REQUIRE_CHROMIUM=1
	export WSLIMIT_ARTIFACTS="$PWD/artifacts"
	mkdir -p "$WSLIMIT_ARTIFACTS"
}

wslimit_setup_chromium
