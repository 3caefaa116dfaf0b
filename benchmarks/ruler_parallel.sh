#!/bin/bash
# A RULER sweep with every (method, budget) in its own harness process, all at once on one GPU
# (SmolLM2 is small: the servers share the GPU; each run's server start, ~70 s of imports and
# graph capture, then overlaps the others'), merged into one table at the end.
#   RULER_COMMON="--device cuda --samples 50 ..." SERVER_ARGS="--dtype bfloat16 ..." \
#     bash benchmarks/ruler_parallel.sh OUTDIR "name|harness args[|more server args]" ...
# Each job writes OUTDIR/<name>/ (ruler.json, logs); OUTDIR/merged/ holds the table.
# JOB_TIMEOUT (s) stops a job (its server too) and merges what finished.
set -u
out=$1; shift
mkdir -p "$out"
pids=(); names=()
for job in "$@"; do
  IFS='|' read -r name extra server <<< "$job"
  # shellcheck disable=SC2086
  timeout -k 30 "${JOB_TIMEOUT:-86400}" python3 -m asynctls_sglang.eval.ruler ${RULER_COMMON:-} $extra --resume --out "$out/$name" \
    --server-args "${SERVER_ARGS:-} ${server:-}" > "$out/$name.txt" 2>&1 &
  pids+=($!); names+=("$name")
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=1; echo "[ruler_parallel] ${names[$i]} failed: $(tail -3 "$out/${names[$i]}.txt")"; }
done
dirs=$(for n in "${names[@]}"; do [ -f "$out/$n/ruler.json" ] && printf '%s,' "$out/$n"; done)
python3 -m asynctls_sglang.eval.ruler ${RULER_COMMON:-} --merge "${dirs%,}" --out "$out/merged"
exit $status
