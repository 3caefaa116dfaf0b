"""RULER accuracy of dense, AsyncTLS and Quest attention, served by SGLang, in one table.

    python -m asynctls_sglang.eval.ruler --context 8192 --samples 10 \
        --methods full,asynctls,quest --budgets 256,512 --out results/ruler_8k

For each (method, budget) the harness starts `python -m <launcher> --model-path M ...`, waits
for /health, sends every sample to /v1/completions (greedy, RULER's max_tokens per task),
scores it with RULER's metric, and stops the server. `full` runs once and appears under every
budget. `--url` evaluates one server that is already running instead (labelled by --label).
Writes <out>/ruler.json, <out>/ruler.png, <out>/table.txt and <out>/logs/<run>.log.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from typing import Any

from asynctls_sglang import env
from asynctls_sglang.eval import client, report
from asynctls_sglang.eval.datagen import Sample, load_or_generate
from asynctls_sglang.eval.methods import METHODS, Run, detect_device, device_args, plan_runs
from asynctls_sglang.eval.prompts import PROMPT_FORMATS, ChatWrapper, chat_wrapper, render
from asynctls_sglang.eval.scoring import score
from asynctls_sglang.eval.server import Server, ServerError, stop_on_sigterm
from asynctls_sglang.eval.tasks import DEFAULT_TASKS, RulerTask


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m asynctls_sglang.eval.ruler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model folder (default: the embedded SmolLM2)")
    p.add_argument("--context", type=int, default=8192,
                   help="RULER max_seq_length: prompt + generated tokens")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--samples", type=int, default=5, help="samples per task")
    p.add_argument("--methods", default="full,asynctls,quest", help=f"from {', '.join(METHODS)}")
    p.add_argument("--budgets", default="256,512", help="token budgets for asynctls and quest")
    p.add_argument("--out", default=None, help="output folder (default results/ruler_<time>)")
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat",
                   help="chat: task in a user turn of the chat template, answer prefix starts the "
                        "assistant turn; base: RULER's plain template")
    p.add_argument("--launcher", default="asynctls_sglang.launch_server",
                   help="module run as `python -m LAUNCHER` (e.g. sglang.launch_server)")
    p.add_argument("--full-backend", default=None, help="dense backend for `full` "
                   "(default torch_native on CPU, flashinfer on GPU)")
    p.add_argument("--dense-threshold", type=int, default=None,
                   help="--asynctls-dense-threshold of the sparse runs (default: each run's token budget, so "
                        "every prompt longer than the budget decodes sparsely)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--mem-fraction-static", type=float, default=None)
    p.add_argument("--server-args", default="", help="extra launcher arguments, one string")
    p.add_argument("--concurrency", type=int, default=1,
                   help="requests in flight at once (the KV pool is sized for them); results do "
                        "not depend on it beyond batch-order rounding")
    p.add_argument("--server-timeout", type=float, default=900.0, help="seconds to wait for /health")
    p.add_argument("--url", default=None, help="evaluate this running server instead of launching")
    p.add_argument("--label", default="server", help="method name shown for --url")
    p.add_argument("--data-cache", default=None, help="generated RULER data (default <cache>/ruler)")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs that <out>/ruler.json already holds complete and run the rest "
                        "(a sweep cut short by a time limit continues where it stopped)")
    p.add_argument("--variant", default=None,
                   help="name appended to the methods (asynctls+NAME) of this sweep, for settings "
                        "passed with --server-args; keeps variants apart in a --merge")
    p.add_argument("--merge", default=None, metavar="DIR,DIR,...",
                   help="write one table (in --out) from the ruler.json of several finished "
                        "sweeps, e.g. ones run in parallel on different GPUs; runs nothing")
    p.add_argument("--agreement", default=None, metavar="METHOD",
                   help="also count, for every other run, the answers identical to METHOD's "
                        "(e.g. offload+x against asynctls+x): in table.txt and ruler.json; with "
                        "--merge METHOD must be in the merged sweeps")
    p.add_argument("--prepare-only", action="store_true",
                   help="generate (or check) the data in --data-cache and exit: carry that folder "
                        "to a machine without RULER's generator")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    out = args.out or os.path.join("results", time.strftime("ruler_%Y%m%d_%H%M%S"))
    task_names = _split(args.tasks)
    if args.merge:
        return _merge(_split(args.merge), out, task_names, args.agreement)
    model = args.model or _default_model()
    wrapper = chat_wrapper(model) if args.prompt_format == "chat" else None
    # The chat wrapping adds tokens RULER's generator does not see: generate shorter prompts.
    gen_length = args.context - (wrapper.overhead_tokens if wrapper else 0)
    data_cache = args.data_cache or os.path.join(env.cache_dir(), "ruler")
    if args.prepare_only:
        _load_data(task_names, model, gen_length, args.samples, data_cache, args.context,
                   args.prompt_format, wrapper)
        log(f"[ruler] data ready in {data_cache}")
        return 0

    if args.url:
        runs = [Run(args.label, None, [])]
    else:
        device = detect_device() if args.device == "auto" else args.device
        if importlib.util.find_spec(args.launcher) is None:
            raise SystemExit(f"launcher module {args.launcher!r} not found; "
                             "pass e.g. --launcher sglang.launch_server")
        runs = plan_runs(_split(args.methods), [int(b) for b in _split(args.budgets)], device,
                         args.full_backend, args.dense_threshold)
        if args.variant:  # e.g. --variant r32 --server-args "--asynctls-index-channels 32"
            runs = [run._replace(method=f"{run.method}+{args.variant}") for run in runs]
        common = device_args(device, args.context, args.mem_fraction_static, args.concurrency)
        common += shlex.split(args.server_args)
    config: dict[str, Any] = {k: v for k, v in vars(args).items()}
    config.update(model=model, out=out, generated_length=gen_length)
    log(f"[ruler] model {model}, context {args.context}, {len(task_names)} tasks x {args.samples} "
        f"samples, runs: {', '.join(run.label for run in runs)} -> {out}")

    data: dict[str, tuple[RulerTask, list[Sample]]] = {}
    results: list[report.SampleResult] = []
    timings: dict[str, Any] = {}
    failed: list[str] = []
    done: set[str] = set()
    if args.resume:
        results, timings, done = _resume(out, runs, task_names, args.samples)
        if done:
            log(f"[ruler] resuming {out}: kept {', '.join(sorted(done))}")
    stop_on_sigterm()
    for run in runs:
        if run.label in done:
            continue
        server = None
        if not args.url:
            server = Server(args.launcher, model, [*common, *run.server_args],
                            os.path.join(out, "logs", f"{run.label}.log")).start()
            log(f"[{run.label}] starting server: {' '.join(server.command)}")
        try:
            if not data:  # generated while the first server boots
                data = _load_data(task_names, model, gen_length, args.samples, data_cache,
                                  args.context, args.prompt_format, wrapper)
            url = args.url or ""
            if server is not None:
                ready_s = server.wait_ready(args.server_timeout)
                log(f"[{run.label}] server ready in {ready_s:.1f} s")
                url = server.url
                timings[f"{run.label}.server_ready_s"] = round(ready_s, 1)
            run_start = time.monotonic()
            results += _evaluate(run, url.rstrip("/"), data, args.prompt_format, wrapper,
                                 args.concurrency)
            timings[f"{run.label}.eval_s"] = round(time.monotonic() - run_start, 1)
            stats = _backend_stats(url.rstrip("/"))
            if stats is not None:  # the sparse path's own account: steps, attended tokens
                timings[f"{run.label}.asynctls"] = stats
                log(f"[{run.label}] backend: {stats.get('sparse_request_steps')} sparse request steps, "
                    f"attended tokens per step {stats.get('attended_tokens_min')}.."
                    f"{stats.get('attended_tokens_max')}, {stats.get('ops')}")
        except (ServerError, RuntimeError, OSError) as error:  # OSError: URLError, refused, timeout
            # One failed run (server crash, bad flag) must not lose the sweep's other runs;
            # data that cannot be generated fails them all.
            if not data:
                raise
            detail = "" if server is None or isinstance(error, ServerError) else "\n" + server.log_tail()
            log(f"[{run.label}] FAILED: {error}{detail}")
            failed.append(run.label)
            timings[f"{run.label}.error"] = str(error).splitlines()[0]
        finally:
            if server is not None:
                server.stop()
        _write(out, config, task_names, runs, results, timings, args.agreement)

    timings["total_s"] = round(time.monotonic() - started, 1)
    table, counts = _write(out, config, task_names, runs, results, timings, args.agreement)
    log("\n" + report.format_table(table))
    if counts is not None:
        log(report.format_agreement(counts, args.agreement))
    elif args.agreement:  # e.g. one job of a parallel sweep: its --merge compares them all
        log(f"[ruler] --agreement {args.agreement!r}: no answers of that method in this sweep "
            f"({', '.join(dict.fromkeys(run.method for run in runs))}); nothing compared")
    log(f"\n[ruler] wrote {out}/ruler.json, {out}/ruler.png, {out}/table.txt "
        f"in {timings['total_s']:.0f} s")
    if failed:
        log(f"[ruler] runs that failed: {', '.join(failed)} (server logs in {out}/logs)")
        return 1
    return 0


def _backend_stats(url: str) -> dict[str, Any] | None:
    """The asynctls backend's statistics from /get_server_info (None for other backends)."""
    try:
        info = client.get_json(f"{url}/get_server_info")
    except (OSError, ValueError):
        return None
    states = info.get("internal_states") or [{}]
    stats = states[0].get("asynctls") if isinstance(states[0], dict) else None
    return dict(stats) if isinstance(stats, dict) else None


def _merge(folders: Sequence[str], out: str, task_names: Sequence[str], reference: str | None = None) -> int:
    results: list[report.SampleResult] = []
    timings: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for folder in folders:
        stored, fresh = report.read_json(os.path.join(folder, "ruler.json"))
        config = config or dict(stored["config"])
        seen = {(r.method, r.budget) for r in results}
        results += [r for r in fresh if (r.method, r.budget) not in seen]
        timings.update({f"{os.path.basename(folder.rstrip('/'))}/{key}": value
                        for key, value in stored["timings"].items()})
    _check_reference(reference, [r.method for r in results])
    pairs = sorted({(r.method, r.budget) for r in results},
                   key=lambda pair: (pair[1] or 0, _method_rank(pair[0]), pair[0]))
    runs = [Run(method, budget, []) for method, budget in pairs]
    config.update(out=out, merged_from=list(folders))
    table, counts = _write(out, config, task_names, runs, results, timings, reference)
    log(report.format_table(table))
    if counts is not None:
        log(report.format_agreement(counts, reference))
    log(f"[ruler] merged {len(folders)} sweeps ({len(results)} samples) into {out}")
    return 0


def _check_reference(reference: str | None, methods: Sequence[str]) -> None:
    """--agreement names one of the merged sweeps' methods (variant included), or the merge stops."""
    if reference and reference not in methods:
        raise SystemExit(f"--agreement {reference!r} is not a method of this sweep "
                         f"({', '.join(dict.fromkeys(methods))})")


def _method_rank(method: str) -> int:
    base = method.split("+", 1)[0]
    return METHODS.index(base) if base in METHODS else len(METHODS)


def _resume(out: str, runs: Sequence[Run], task_names: Sequence[str],
            samples: int) -> tuple[list[report.SampleResult], dict[str, Any], set[str]]:
    """The finished runs of <out>/ruler.json: every task with `samples` results. Others rerun."""
    path = os.path.join(out, "ruler.json")
    if not os.path.isfile(path):
        return [], {}, set()
    stored, loaded = report.read_json(path)
    kept: list[report.SampleResult] = []
    done: set[str] = set()
    for run in runs:
        mine = [r for r in loaded if r.method == run.method and r.budget == run.budget
                and r.task in task_names]
        per_task = {task: sum(r.task == task for r in mine) for task in task_names}
        if all(count == samples for count in per_task.values()):
            kept += mine
            done.add(run.label)
    timings = {key: value for key, value in stored.get("timings", {}).items()
               if key.split(".")[0] in done}
    return kept, timings, done


def _default_model() -> str:
    from asynctls_sglang.models.smollm2 import ensure_smollm2

    return ensure_smollm2()


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _load_data(task_names: Sequence[str], model: str, length: int, samples: int, cache: str,
               context: int, prompt_format: str,
               wrapper: ChatWrapper | None) -> dict[str, tuple[RulerTask, list[Sample]]]:
    """Tasks are generated in parallel (one subprocess each, mostly single-threaded tokenising).

    Every rendered prompt plus the task's generation must fit in `context` tokens (the server
    refuses longer requests). RULER's generators estimate lengths and some overshoot (fwe by
    ~40 tokens at 8k): such a task is generated again shorter by its overshoot. The retry
    lengths are a function of the data, so a machine that only reads the cache finds them too.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    lock = threading.Lock()  # a fast tokenizer is not safe to share across threads

    def overshoot(task: RulerTask, loaded: list[Sample]) -> int:
        prompts = [render(sample, prompt_format, wrapper) for sample in loaded]
        with lock:
            longest = max(len(ids) for ids in tokenizer(prompts)["input_ids"])
        return longest + task.tokens_to_generate - context

    def load(name: str) -> tuple[RulerTask, list[Sample]]:
        target = length
        for _ in range(3):
            task, loaded = load_or_generate(name, model, target, samples, cache, log)
            over = overshoot(task, loaded)
            if over <= 0:
                return task, loaded
            log(f"[data] {name} at {target}: a prompt is {over} tokens over {context}; "
                f"generating at {target - over - 8}")
            target -= over + 8
        raise RuntimeError(f"{name}: RULER's prompts stay longer than {context} tokens")

    workers = max(1, min(len(task_names), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(task_names, pool.map(load, task_names)))


def _evaluate(run: Run, url: str, data: dict[str, tuple[RulerTask, list[Sample]]],
              prompt_format: str, wrapper: ChatWrapper | None,
              concurrency: int = 1) -> list[report.SampleResult]:
    """Every sample of every task; `concurrency` requests in flight, results in task order."""
    model = client.served_model(url)
    jobs = [(task, i, sample) for task, samples in data.values() for i, sample in enumerate(samples)]
    counts = {task.name: len(samples) for task, samples in data.values()}

    def one(job: tuple[RulerTask, int, Sample]) -> report.SampleResult:
        task, i, sample = job
        start = time.monotonic()
        prediction = client.complete(url, model, render(sample, prompt_format, wrapper),
                                     max_tokens=task.tokens_to_generate)
        elapsed = time.monotonic() - start
        value = score(task.metric, prediction, sample.references)
        log(f"[{run.label}] {task.name} {i + 1}/{counts[task.name]} score {value:.2f} "
            f"{elapsed:5.1f} s  {prediction.strip()[:60]!r}")
        return report.SampleResult(task.name, run.method, run.budget, sample.sample_index,
                                   prediction, sample.references, value, elapsed, sample.length)

    if concurrency <= 1:
        return [one(job) for job in jobs]
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        return list(pool.map(one, jobs))  # map keeps the input order
    finally:
        # On an interrupt, do not wait for requests in flight: stopping the server ends them.
        pool.shutdown(wait=False, cancel_futures=True)


def _write(out: str, config: dict[str, Any], task_names: Sequence[str], runs: Sequence[Run],
           results: Sequence[report.SampleResult], timings: dict[str, Any],
           reference: str | None = None) -> tuple[report.Table, dict[str, dict[str, int]] | None]:
    """-> (the table, the agreement counts or None). reference: a method whose answers the others
    are compared with (report.agreement); while it has not answered yet (a sweep in progress), no
    comparison is written."""
    methods = list(dict.fromkeys(run.method for run in runs))
    budgets: list[int | None] = list(dict.fromkeys(run.budget for run in runs if run.budget is not None))
    table = report.build_table(report.task_scores(results), task_names, methods,
                               budgets or [None])
    counts = None
    if reference and any(r.method == reference for r in results):
        counts = report.agreement(results, reference)
    report.write_json(os.path.join(out, "ruler.json"), config, table, results, timings,
                      None if counts is None else {"reference": reference, "runs": counts})
    with open(os.path.join(out, "table.txt"), "w") as handle:
        handle.write(report.format_table(table) + "\n")
        if counts is not None:
            handle.write(report.format_agreement(counts, reference) + "\n")
    report.plot(os.path.join(out, "ruler.png"), table,
                f"RULER {config['context']} tokens, {os.path.basename(str(config['model']))}")
    return table, counts


if __name__ == "__main__":
    sys.exit(main())
