#!/usr/bin/env bash
# Create .venv and install jetflows into it; a no-op when nothing changed since the last run.
# Order matters: torch first (torch==2.13.0 is a local CPU build here; a looser spec, or a
# package that pulls torch in, downloads a multi-GB CUDA build), then everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${JETFLOWS_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${JETFLOWS_TORCH:-torch==2.13.0}   # e.g. JETFLOWS_TORCH=torch (GPU) or a CPU index
stamp="$VENV/.jetflows-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$TORCH_SPEC

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$PYTHON" - <<'PY'
import sys
if not (3, 10) <= sys.version_info[:2] <= (3, 13):
    sys.exit(f"jetflows needs Python 3.10-3.13 (pythia8mc wheels), found {sys.version.split()[0]}")
PY
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "setup: installing $TORCH_SPEC, then jetflows and its dependencies into $VENV" >&2
read -r -a torch_spec <<< "$TORCH_SPEC"  # may carry options: "torch --index-url URL"
"${pip[@]}" "${torch_spec[@]}"
"${pip[@]}" -e ".[dev]"
echo "$want" > "$stamp"
