#!/usr/bin/env bash
# The whole test suite, as root: installs what it needs, then
#   bpf objects and cffi declarations up to date, ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then echo "scripts/test.sh: run as root (sudo): the tests load BPF programs" >&2; exit 2; fi
bash scripts/setup.sh --test
echo "== bpf objects"; make -s -C bpf check
echo "== ruff";  .venv/bin/ruff check pyxdp tests tools scripts benchmarks
echo "== mypy";  .venv/bin/mypy pyxdp scripts/kernel_checks.py scripts/venv_current.py
echo "== pytest"
# the installed package is what runs (.venv/bin/pytest does not put the source tree first on sys.path).
# Four pytest-xdist workers: the kernel tests mostly wait (for their CLI processes, netlink and the
# kernel), so more workers than the 2 cores. --dist loadgroup (no test is in a group) hands out the
# tests one at a time to whichever worker is free, the long ones first (tests/conftest.py); xdist's
# plain 'load' sends fixed chunks ahead. -n 0 after it: one process, as before.
exec .venv/bin/pytest -q -p no:cacheprovider -n 4 --dist loadgroup tests "$@"
