#!/usr/bin/env bash
# The quick start: builds the whiteboard, then runs `concord serve` with it
# at `/`. Extra arguments go to `concord serve` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
web/build.sh
exec cargo run --release --locked -p concord-server --bin concord -- serve --static web/whiteboard/dist "$@"
