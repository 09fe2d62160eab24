#!/usr/bin/env bash
# Long runs of the whole-system simulation (engine/tests/simulation.rs):
# N seeds (default 10,000) in release mode, or one seed to replay:
#   scripts/simulate.sh 100000
#   scripts/simulate.sh --seed 4711
# The normal test run (scripts/test.sh) runs the first 1,000 seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--seed" ]; then
  export CONCORD_SIM_SEED="${2:?usage: scripts/simulate.sh --seed N}"
else
  export CONCORD_SIM_SEEDS="${1:-10000}"
fi
exec cargo test --release --locked -p concord-engine --test simulation -- --nocapture
