#!/usr/bin/env bash
# The reproduction table (docs/benchmarks.md, "Reproduction table (full budget)"): prepares the
# data, runs or resumes the planned full-budget runs, writes the table. Every option goes to
# benchmarks/reproduce.py (see --help there); this wrapper only readies a bare GPU machine:
#   - Python packages missing there are installed from .whl/ (benchmarks/device_env.sh),
#   - prepared data folders carried as .devdata/<folder>.tar.xz are unpacked into data/.
# Usage, from anywhere:
#   bash benchmarks/reproduce.sh --dry-run
#   bash benchmarks/reproduce.sh --only r01 --time-budget 510 --restore .runs-in --archive "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/device_env.sh
exec "${PY:-python3}" benchmarks/reproduce.py "$@"
