#!/usr/bin/env bash
# Runs the benchmarks as BENCHMARKS.md describes and writes their tables to
# benchmarks/results-{core,matrix,variants,bulk,sweeper,tracing,wire,attach,rules,exporter,conntrack,guard,shapes,reshape,fail2ban}.md
# (fail2ban: when fail2ban is installed, as scripts/setup.sh --test does; ~8 minutes more).
# As root; ~18 minutes.
# The scripts import pyxdp from this tree (PYTHONPATH), whatever .venv holds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then echo "scripts/bench.sh: run as root (sudo)" >&2; exit 2; fi
bash scripts/setup.sh --bench
export PYTHONPATH=$PWD

# each script's tables go to benchmarks/results-NAME.md, replaced only when it succeeds
run() {
  local name=$1; shift
  local tmp
  tmp=$(mktemp)
  .venv/bin/python "benchmarks/$name.py" "$@" | tee "$tmp"
  mv "$tmp" "benchmarks/results-$name.md"
}
run core "$@"
run matrix "$@"
run variants
run bulk
run sweeper
run tracing
run wire
run attach
run rules
run exporter
run conntrack
run guard
run shapes "$@"
run reshape
if command -v fail2ban-server >/dev/null; then run fail2ban; else echo "bench.sh: no fail2ban (scripts/setup.sh --test installs it): fail2ban skipped" >&2; fi
