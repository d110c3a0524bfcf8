# Sourced by scripts/demo and scripts/test: create .venv if missing and install the project.
# torch is pinned to the CPU build first: an unpinned `torch` resolves to a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
TORCH_PIN="${REINIT_TORCH_PIN:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing $TORCH_PIN (CPU build)" >&2
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
fi
install_project() {  # $1: extras, e.g. "test" or ""; pip's chatter goes to .venv/install.log
  local spec="$ROOT"
  [ -n "${1:-}" ] && spec="$ROOT[$1]"
  if ! "$VENV/bin/python" -m pip install -q -e "$spec" >"$VENV/install.log" 2>&1; then
    cat "$VENV/install.log" >&2
    echo "pip install failed (log above, also in $VENV/install.log)" >&2
    return 1
  fi
}
