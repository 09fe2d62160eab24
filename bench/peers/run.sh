#!/usr/bin/env bash
# Side-by-side benchmarks of Concord, ShareDB and Yjs (issue 6), one Node load
# generator with one adapter per system. Installs what it needs, builds the
# Concord server (release) and @concord/client, runs W1–W3 for all three
# systems (5 repetitions by default) and writes the section between
# <!-- peers:begin --> and <!-- peers:end --> of docs/benchmarks.md plus
# docs/img/peers-*.svg.
#
#   bench/peers/run.sh                  # the full run (about 12 minutes on 2 cores)
#   bench/peers/run.sh --smoke          # correctness only: tiny C and K, one repetition, docs untouched
#   bench/peers/run.sh --reps 3 --clients 16 --ops 400   # any option of src/main.js
#
# Environment: CONCORD_BIN (a prebuilt binary: skips the cargo build),
# PEERS_SKIP_INSTALL=1 (reuse node_modules), PEERS_NO_DOCS=1 (do not touch docs/).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
smoke=0
for arg in "$@"; do
  [[ "$arg" == "--smoke" ]] && smoke=1
done
step() { printf '\n== [%ss] %s\n' "$SECONDS" "$*" >&2; }

step "Concord server (release)"
if [[ -z "${CONCORD_BIN:-}" ]]; then
  (cd "$repo" && cargo build --release -p concord-server --bin concord)
  export CONCORD_BIN="$repo/target/release/concord"
fi
[[ -x "$CONCORD_BIN" ]] || { echo "error: no concord binary at $CONCORD_BIN" >&2; exit 1; }

step "@concord/client (web/client)"
# web/ is shared with the web tests: install only when it has never been
# installed, so a run here never deletes node_modules under a running test.
if [[ ! -d "$repo/web/node_modules/ws" ]]; then
  (cd "$repo/web" && npm ci --no-audit --no-fund)
fi
(cd "$repo/web" && npm run --silent build -w @concord/client)

step "bench/peers dependencies (npm ci)"
if [[ "${PEERS_SKIP_INSTALL:-0}" != 1 || ! -d "$here/node_modules" ]]; then
  # --include=optional: @y/websocket-server imports y-leveldb at load time.
  (cd "$here" && npm ci --include=optional --no-audit --no-fund --loglevel=error)
fi

versions="$(cd "$here" && node -e '
  const v = (p) => JSON.parse(require("fs").readFileSync(require.resolve(p + "/package.json", { paths: ["."] }))).version;
  const out = {};
  for (const p of ["sharedb", "ot-json0", "@teamwork/websocket-json-stream", "yjs", "y-websocket", "@y/websocket-server", "ws"]) out[p] = v(p);
  let rev = "unknown";
  try { rev = require("child_process").execFileSync("git", ["-C", process.argv[1], "rev-parse", "--short", "HEAD"]).toString().trim(); } catch {}
  try { if (require("child_process").execFileSync("git", ["-C", process.argv[1], "status", "--porcelain", "server", "engine", "web/client/src"]).toString().trim()) rev += " + uncommitted changes"; } catch {}
  out.concord = rev;
  console.log(JSON.stringify(out));
' "$repo")"
export PEERS_VERSIONS="$versions"
export PEERS_COMMAND="bench/peers/run.sh${*:+ $*}"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
kind=""
[[ $smoke == 1 ]] && kind="smoke-"
out="$here/results/peers-$kind$stamp.json"
step "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
step "running (results: ${out#"$repo/"})"
status=0
(cd "$here" && node src/main.js "$@" --out "$out") || status=$?
if [[ $smoke == 1 ]]; then
  step "client receive microbenchmark (small: it checks every change arrives)"
  (cd "$here" && node src/client-receive.js --rounds 20 --runs 1) || status=1
fi

if [[ $smoke == 0 && "${PEERS_NO_DOCS:-0}" != 1 && -f "$out" ]]; then
  step "report: docs/benchmarks.md (peers section) and docs/img/peers-*.svg"
  (cd "$here" && node src/report.js "$out")
fi
exit $status
