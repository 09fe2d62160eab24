#!/usr/bin/env bash
# The one test command (README): installs what the suites need, then runs
# every suite. CI runs exactly this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*"; }

step "toolchain"
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "fuzz targets build"
cargo build --manifest-path fuzz/Cargo.toml --locked

step "web: TypeScript client and whiteboard (unit, integration, Chromium e2e)"
cargo build --locked -p concord-server --bin concord
CONCORD_BIN="$PWD/target/debug/concord" web/test.sh

step "benchmark harnesses still measure what they claim (concord-bench ran in tests; bench/peers smoke)"
CONCORD_BIN="$PWD/target/debug/concord" PEERS_NO_DOCS=1 bench/peers/run.sh --smoke

echo
echo "all suites passed (${SECONDS}s)"
