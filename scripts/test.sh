#!/usr/bin/env bash
# Set up .venv (no-op when up to date), lint, and run the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} JETFLOWS_TEST_THREADS=${JETFLOWS_TEST_THREADS:-1}
.venv/bin/ruff check .
# two workers, one torch thread each: the 2-core CI machine runs two test files at once
# (--dist loadfile: a module's fixtures stay in one worker); JETFLOWS_TEST_WORKERS=0: serial
.venv/bin/python -m pytest -q -n "${JETFLOWS_TEST_WORKERS:-2}" --dist loadfile "$@"
