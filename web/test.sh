#!/usr/bin/env bash
# The web test command: installs what it needs (npm packages from the lock
# file; Debian's chromium when /usr/bin/chromium is missing; the `concord`
# binary through cargo), builds the web parts, then runs the TypeScript
# client's unit tests, its integration tests against the real binary, and
# the whiteboard's end-to-end tests in headless Chromium. Exits non-zero if
# anything fails; ends with the totals over all three suites.
set -uo pipefail
cd "$(dirname "$0")"
WEB="$(pwd)"
ROOT="$(cd .. && pwd)"

step() { printf '\n==> %s\n' "$*"; }
die() { echo "web/test.sh: $*" >&2; exit 1; }

step "npm packages"
command -v npm >/dev/null || die "Node.js 20+ and npm are required"
npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed"

step "chromium"
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || die "apt-get install chromium failed"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || die "install Debian's chromium (apt-get install chromium)"
  fi
fi
"${CHROMIUM_PATH:-/usr/bin/chromium}" --version 2>/dev/null | head -1

step "concord binary"
if [ -z "${CONCORD_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --locked -p concord-server --bin concord) || die "cargo build of the concord binary failed"
  export CONCORD_BIN="$ROOT/target/debug/concord"
fi
echo "$CONCORD_BIN"

step "build"
npm run --silent build -w @concord/client || die "client build failed"
npm run --silent build -w @concord/whiteboard || die "whiteboard build failed"
npm run --silent build:test -w @concord/client || die "client test build failed"
npm run --silent build:test -w @concord/whiteboard || die "whiteboard test build failed"
npm run --silent build:e2e || die "e2e build failed"

passed=0
failed=0
status=0
run_suite() {
  local name="$1"; shift
  step "$name"
  local log
  log="$(mktemp)"
  "$@" 2>&1 | tee "$log"
  local code=${PIPESTATUS[0]}
  local p f
  p=$(grep -E '^# pass [0-9]+' "$log" | tail -1 | awk '{print $3}')
  f=$(grep -E '^# fail [0-9]+' "$log" | tail -1 | awk '{print $3}')
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  if [ "$code" -ne 0 ] || [ -z "$p" ]; then status=1; fi
  rm -f "$log"
}

mkdir -p "$WEB/e2e/artifacts"
run_suite "unit tests (client)" node --test client/build/test/unit/
run_suite "integration tests (client and whiteboard model against concord)" node --test --test-concurrency=1 client/build/test/integration/ whiteboard/build/whiteboard/test/
run_suite "end-to-end tests (whiteboard in Chromium)" node --test --test-concurrency=1 e2e/build/e2e/
echo
echo "screenshots: $WEB/e2e/artifacts/"
echo "web: $passed passed, $failed failed"
exit $status
