#!/usr/bin/env bash
# Builds the whiteboard into web/whiteboard/dist (served by
# `concord serve --static web/whiteboard/dist`). Installs the npm packages
# from package-lock.json first when they are missing or stale.
set -euo pipefail
cd "$(dirname "$0")"

command -v npm >/dev/null || { echo "web/build.sh: Node.js 20+ and npm are required" >&2; exit 1; }
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build -w @concord/whiteboard
