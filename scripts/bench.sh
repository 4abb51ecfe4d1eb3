#!/usr/bin/env bash
# Runs the benchmarks as BENCHMARKS.md describes and writes their tables to
# benchmarks/results-{core,matrix,variants,bulk,tracing,wire,attach}.md. As root; takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then echo "scripts/bench.sh: run as root (sudo)" >&2; exit 2; fi
bash scripts/setup.sh --bench
.venv/bin/python benchmarks/core.py "$@" | tee benchmarks/results-core.md
.venv/bin/python benchmarks/matrix.py "$@" | tee benchmarks/results-matrix.md
.venv/bin/python benchmarks/variants.py | tee benchmarks/results-variants.md
.venv/bin/python benchmarks/bulk.py | tee benchmarks/results-bulk.md
.venv/bin/python benchmarks/tracing.py | tee benchmarks/results-tracing.md
.venv/bin/python benchmarks/wire.py | tee benchmarks/results-wire.md
.venv/bin/python benchmarks/attach.py | tee benchmarks/results-attach.md
