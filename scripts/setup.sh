#!/usr/bin/env bash
# One-time set-up of a fresh machine: a virtual environment in .venv with tokenweight and its test extras.
# Without a GPU it pins the CPU build of PyTorch (torch==2.13.0); with one (nvidia-smi works) it installs
# PyTorch's default CUDA build. Set TORCH_SPEC to choose another torch requirement (e.g. TORCH_SPEC="torch==2.8.0").
# Re-running is cheap: nothing is reinstalled while pyproject.toml and this script are unchanged.
# `scripts/setup.sh --browser` (what `make test` runs) also installs chromium, as root on Debian, for the browser
# test of the HTML report; `make train` needs no browser.
set -euo pipefail
cd "$(dirname "$0")/.."
browser=false
[ "${1:-}" = "--browser" ] && browser=true
# The HTML weight report is tested in a real headless browser: Debian's chromium, installed when we can (root).
if $browser && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium (browser test of the HTML weight report)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup: could not install chromium; the browser test will be skipped" >&2
fi
python=${PYTHON:-python3}
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/tokenweight ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch"
  else
    TORCH_SPEC="torch==2.13.0"   # CPU build on machines without a GPU
  fi
fi
echo "setup: installing $TORCH_SPEC"
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
echo "setup: installing tokenweight with its test extras"
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "$want" > "$stamp"
echo "setup: done (.venv)"
