#!/usr/bin/env bash
# The main job: boot the quickstart stack, show it working, take it down.
set -euo pipefail
cd "$(dirname "$0")/.."
stack=bin/stack
file=examples/stacks/quickstart.hcl
export STACK_STATE_DIR="${STACK_STATE_DIR:-$PWD/.demo-state}"

trap '$stack -f $file down --progress plain >/dev/null 2>&1 || true' EXIT
$stack -f "$file" plan
$stack -f "$file" up --progress plain
$stack -f "$file" ps
echo "--- client's console: it fetches http://web/ by name every 2 s"
sleep 5
$stack -f "$file" logs --tail 5 client
$stack -f "$file" down --progress plain
trap - EXIT
