"""RULER scoring, run planning, prompt rendering and the result table: pure Python, no server."""
from __future__ import annotations

import json
import os

import pytest

from asynctls_sglang.eval import report
from asynctls_sglang.eval.datagen import SPLIT, Sample, _parse
from asynctls_sglang.eval.methods import Run, device_args, plan_runs
from asynctls_sglang.eval.prompts import ChatWrapper, render
from asynctls_sglang.eval.scoring import clean_prediction, score, string_match_all, string_match_part

SCORE_CASES = [
    # (id, metric, prediction, references, expected)
    ("all-one-found", "string_match_all", " 3608513.", ["3608513"], 1.0),
    ("all-none-found", "string_match_all", " 3608518.", ["3608513"], 0.0),
    ("all-partial", "string_match_all", "8038374, 4698379 and more", ["8038374", "4698379", "8536477", "5667265"], 0.5),
    ("all-case-insensitive", "string_match_all", "3B8FAA18-37f8", ["3b8faa18-37F8"], 1.0),
    ("all-empty-prediction", "string_match_all", "", ["x"], 0.0),
    ("part-any-found", "string_match_part", "Paris, France", ["London", "paris"], 1.0),
    ("part-none-found", "string_match_part", "Rome", ["London", "Paris"], 0.0),
    # A reference split by a control character does not match (RULER turns it into a newline).
    ("control-char-breaks-match", "string_match_all", "ab\tcd", ["ab cd"], 0.0),
]


@pytest.mark.parametrize("metric,prediction,references,expected",
                         [case[1:] for case in SCORE_CASES], ids=[case[0] for case in SCORE_CASES])
def test_score(metric: str, prediction: str, references: list[str], expected: float) -> None:
    assert score(metric, prediction, references) == pytest.approx(expected)


def test_clean_prediction_strips_and_replaces_control_characters() -> None:
    assert clean_prediction("  a\tb\x00c \n") == "a\nb\nc"
    assert clean_prediction(None) == ""


def test_scoring_needs_references() -> None:
    with pytest.raises(ValueError):
        string_match_all("x", [])
    with pytest.raises(ValueError):
        string_match_part("x", [])


def test_full_runs_once_and_sparse_methods_per_budget() -> None:
    runs = plan_runs(["full", "asynctls", "quest"], [256, 512], device="cpu")
    assert [run.label for run in runs] == ["full", "asynctls@256", "quest@256", "asynctls@512", "quest@512"]
    assert runs[0].server_args == ["--attention-backend", "torch_native"]
    # sparse from the budget on (the launcher's default threshold would decode RULER 8k densely)
    assert runs[1].server_args == ["--asynctls-token-budget", "256", "--asynctls-dense-threshold", "256"]
    assert runs[2].server_args == ["--asynctls-selection", "quest", "--asynctls-token-budget", "256",
                                   "--asynctls-dense-threshold", "256"]
    assert runs[3].server_args[-1] == "512"


def test_plan_options_backend_and_threshold() -> None:
    runs = plan_runs(["full", "asynctls"], [128], device="cuda", dense_threshold=0)
    assert runs[0].server_args == ["--attention-backend", "flashinfer"]
    assert runs[1].server_args[-2:] == ["--asynctls-dense-threshold", "0"]
    assert plan_runs(["full"], [1], "cpu", full_backend="triton")[0].server_args[-1] == "triton"
    with pytest.raises(ValueError, match="unknown method"):
        plan_runs(["dense"], [256], device="cpu")


def test_offload_method_turns_the_engine_on() -> None:
    runs = plan_runs(["asynctls", "offload"], [512], device="cuda")
    assert [run.label for run in runs] == ["asynctls@512", "offload@512"]
    assert runs[1].server_args == ["--asynctls-offload", "--asynctls-token-budget", "512", "--asynctls-dense-threshold", "512"]


def test_device_args_size_the_pool_for_the_requests_in_flight() -> None:
    def total(args: list[str]) -> int:
        return int(args[args.index("--max-total-tokens") + 1])

    assert total(device_args("cuda", 8192, None)) == 2 * 8192 + 1024
    assert total(device_args("cuda", 8192, None, concurrency=16)) == 17 * 8192 + 1024
    with pytest.raises(ValueError, match="concurrency"):
        device_args("cuda", 8192, None, concurrency=0)


def test_concurrent_evaluation_keeps_task_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time as _time

    from asynctls_sglang.eval import ruler
    from asynctls_sglang.eval.tasks import RulerTask

    in_flight, peak, lock = [0], [0], threading.Lock()

    def fake_complete(url: str, model: str, prompt: str, max_tokens: int) -> str:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        _time.sleep(0.02 * (len(prompt) % 3))  # finish out of order
        with lock:
            in_flight[0] -= 1
        return prompt.split("|")[1]

    monkeypatch.setattr(ruler.client, "served_model", lambda url: "m")
    monkeypatch.setattr(ruler.client, "complete", fake_complete)
    monkeypatch.setattr(ruler, "render", lambda sample, fmt, wrapper: sample.task_prompt)
    task = RulerTask("niah_single_1", "niah", (), "{context}", "", 8)
    samples = [Sample(i, f"{'x' * i}|{i}|", "", [str(i)], 10) for i in range(9)]
    out = ruler._evaluate(Run("asynctls", 256, []), "http://x", {"niah_single_1": (task, samples)},
                          "base", None, concurrency=4)
    assert [r.sample_index for r in out] == list(range(9))
    assert all(r.score == 1.0 for r in out)
    assert 1 < peak[0] <= 4


def test_parse_splits_prompt_and_answer_prefix() -> None:
    record = {"index": 3, "input": f"Find it.{SPLIT} The answer is", "outputs": ["42"], "length": 99}
    assert _parse(record) == Sample(3, "Find it.", " The answer is", ["42"], 99)


def test_render_base_and_chat() -> None:
    sample = Sample(0, "Context.\nQuestion?", " The answer is", ["1"], 10)
    wrapper = ChatWrapper(head="<u>", tail="</u><a>", overhead_tokens=4)
    assert render(sample, "base") == "Context.\nQuestion? The answer is"
    assert render(sample, "chat", wrapper) == "<u>Context.\nQuestion?</u><a>The answer is"
    with pytest.raises(ValueError):
        render(sample, "chat")


def _result(task: str, method: str, budget: int | None, value: float, index: int = 0) -> report.SampleResult:
    return report.SampleResult(task, method, budget, index, "pred", ["ref"], value, 1.0, 100)


@pytest.fixture
def table() -> report.Table:
    results = [
        _result("niah", "full", None, 1.0, 0), _result("niah", "full", None, 0.0, 1),
        _result("vt", "full", None, 0.8),
        _result("niah", "asynctls", 256, 0.25), _result("vt", "asynctls", 256, 0.75),
        _result("niah", "asynctls", 512, 1.0),  # vt@512 missing: a failed run
    ]
    return report.build_table(report.task_scores(results), ["niah", "vt"], ["full", "asynctls"], [256, 512])


def test_table_repeats_the_shared_method_under_every_budget(table: report.Table) -> None:
    assert [(c.method, c.budget, c.shared) for c in table.columns] == [
        ("full", 256, True), ("asynctls", 256, False), ("full", 512, True), ("asynctls", 512, False)]
    rows = dict(table.rows)
    assert rows["niah"] == [0.5, 0.25, 0.5, 1.0]
    assert rows["vt"] == [0.8, 0.75, 0.8, None]


def test_average_row_is_none_for_incomplete_columns(table: report.Table) -> None:
    assert table.rows[-1][0] == report.AVERAGE
    averages = table.rows[-1][1]
    assert averages[:3] == pytest.approx([0.65, 0.5, 0.65])
    assert averages[3] is None


def test_format_table(table: report.Table) -> None:
    lines = report.format_table(table).splitlines()
    assert lines[0].split() == ["budget", "256", "256", "512", "512"]
    assert lines[1].split() == ["task", "full", "asynctls", "full", "asynctls"]
    assert lines[3].split() == ["niah", "0.500", "0.250", "0.500", "1.000"]
    assert lines[4].split() == ["vt", "0.800", "0.750", "0.800", "-"]
    assert lines[-1].split() == ["average", "0.650", "0.500", "0.650", "-"]


def test_table_json_lists_shared_scores_once(table: report.Table) -> None:
    entries = report.table_json(table)
    full = [e for e in entries if e["method"] == "full"]
    assert [(e["task"], e["budget"]) for e in full] == [("niah", None), ("vt", None), ("average", None)]
    assert len(entries) == 3 * 3  # 3 rows x (full, asynctls@256, asynctls@512)


def test_json_and_png_are_written(table: report.Table, tmp_path: str) -> None:
    results = [_result("niah", "full", None, 1.0)]
    json_path = os.path.join(tmp_path, "out", "ruler.json")
    png_path = os.path.join(tmp_path, "out", "ruler.png")
    report.write_json(json_path, {"context": 1024}, table, results, {"total_s": 1.0})
    report.plot(png_path, table, "test")
    with open(json_path) as handle:
        payload = json.load(handle)
    assert payload["config"] == {"context": 1024}
    assert payload["samples"][0]["task"] == "niah"
    assert "average" in payload["table_text"]
    with open(png_path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cached_data_loads_without_the_ruler_package(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU box has no RULER generator: data generated elsewhere is read with its sidecar."""
    from asynctls_sglang.eval import datagen
    from asynctls_sglang.eval.tasks import RulerTask

    tokenizer = os.path.join(tmp_path, "tok")
    os.makedirs(tokenizer)
    with open(os.path.join(tokenizer, "tokenizer.json"), "w") as handle:
        handle.write("{}")
    task = RulerTask("niah_x", "niah", (("num_needle_k", "1"),), "T {context} {query}", " A", 128)
    key = datagen._cache_key(task.name, tokenizer, 1000, 1)
    path = os.path.join(tmp_path, f"{task.name}-1000-1-{key}.jsonl")
    with open(path, "w") as handle:
        handle.write(json.dumps({"index": 0, "input": f"Q{SPLIT} A", "outputs": ["7"], "length": 900}) + "\n")
    monkeypatch.setattr(datagen, "ruler_available", lambda: False)
    with pytest.raises(RuntimeError, match="--prepare-only"):  # no sidecar yet
        datagen.load_or_generate(task.name, tokenizer, 1000, 1, str(tmp_path))
    datagen._write_sidecar(path, task)
    loaded, samples = datagen.load_or_generate(task.name, tokenizer, 1000, 1, str(tmp_path))
    assert loaded == task
    assert samples == [Sample(0, "Q", " A", ["7"], 900)]
    # Another tokenizer (same path, other contents) is another cache entry.
    with open(os.path.join(tokenizer, "tokenizer.json"), "w") as handle:
        handle.write('{"changed": 1}')
    assert datagen._cache_key(task.name, tokenizer, 1000, 1) != key


def test_resume_keeps_complete_runs_only(tmp_path: str) -> None:
    from asynctls_sglang.eval import ruler

    def result(method: str, budget: int | None, task: str, i: int) -> report.SampleResult:
        return report.SampleResult(task, method, budget, i, "p", ["r"], 1.0, 0.1, 100)

    runs = plan_runs(["full", "asynctls"], [256, 512], device="cpu")
    stored = [result("full", None, t, i) for t in ("a", "b") for i in range(2)]
    stored += [result("asynctls", 256, t, i) for t in ("a", "b") for i in range(2)]
    stored += [result("asynctls", 512, "a", i) for i in range(2)]  # cut short: task b missing
    table = report.build_table(report.task_scores(stored), ["a", "b"], ["full", "asynctls"], [256, 512])
    report.write_json(os.path.join(tmp_path, "ruler.json"), {}, table, stored,
                      {"full.eval_s": 1.0, "asynctls@512.eval_s": 2.0})
    kept, timings, done = ruler._resume(str(tmp_path), runs, ["a", "b"], samples=2)
    assert done == {"full", "asynctls@256"}
    assert len(kept) == 8 and all(r.budget != 512 for r in kept)
    assert timings == {"full.eval_s": 1.0}
    assert ruler._resume(str(tmp_path / "none"), runs, ["a", "b"], 2) == ([], {}, set())


def test_merge_combines_sweeps_into_one_table(tmp_path: str) -> None:
    from asynctls_sglang.eval import ruler

    def sweep(name: str, pairs: list[tuple[str, int | None]], value: float) -> str:
        folder = os.path.join(tmp_path, name)
        rows = [report.SampleResult(t, m, b, i, "p", ["r"], value, 0.1, 100)
                for m, b in pairs for t in ("a", "b") for i in range(2)]
        table = report.build_table(report.task_scores(rows), ["a", "b"],
                                   list(dict.fromkeys(m for m, _ in pairs)), [256])
        report.write_json(os.path.join(folder, "ruler.json"), {"context": 8192, "model": "m"},
                          table, rows, {"full.eval_s": 1.0})
        return folder

    first = sweep("gpu0", [("full", None), ("asynctls", 256)], 1.0)
    second = sweep("gpu1", [("quest", 256), ("full", None)], 0.0)  # its `full` is a duplicate
    out = os.path.join(tmp_path, "merged")
    assert ruler.main(["--merge", f"{first},{second}", "--out", out, "--tasks", "a,b"]) == 0
    stored = json.load(open(os.path.join(out, "ruler.json")))
    assert len(stored["samples"]) == 12  # the second `full` is dropped, not averaged in
    scores = {(s["method"], s["budget"]) for s in stored["samples"]}
    assert scores == {("full", None), ("asynctls", 256), ("quest", 256)}
    assert all(s["score"] == 1.0 for s in stored["samples"] if s["method"] == "full")
    assert os.path.isfile(os.path.join(out, "ruler.png"))


def test_agreement_counts_identical_answers_against_a_reference(tmp_path: str) -> None:
    """Offload on and off can score the same while an answer changed: --agreement counts the
    identical answer texts per run, matched by task and sample (and budget, else the reference's
    budget-independent answer); a merge whose sweeps lack the reference stops with a message."""
    from asynctls_sglang.eval import ruler

    def rows(method: str, budget: int | None, answers: list[str]) -> list[report.SampleResult]:
        return [report.SampleResult("a", method, budget, i, text, ["x"], float(text == "x"), 0.1, 100)
                for i, text in enumerate(answers)]

    results = (rows("asynctls+k", 512, ["x", "y", "z"]) + rows("offload+k", 512, ["x", "y", "w"])
               + rows("offload+k", 256, ["x", "q", "z"]) + rows("full", None, ["x", "y", "z"]))
    counts = report.agreement(results, "asynctls+k")
    # budget 256 has no asynctls+k answers: nothing to compare there; full (no budget) matches at its own key
    assert counts == {"offload+k@512": {"equal": 2, "compared": 3}}
    assert report.agreement(results, "full") == {
        "asynctls+k@512": {"equal": 3, "compared": 3}, "offload+k@512": {"equal": 2, "compared": 3},
        "offload+k@256": {"equal": 2, "compared": 3}}
    assert "offload+k@512: 2/3" in report.format_agreement(counts, "asynctls+k")
    with pytest.raises(ValueError, match="no answers of that method"):
        report.agreement(results, "quest")

    folder = os.path.join(tmp_path, "sweep")
    table = report.build_table(report.task_scores(results), ["a"], ["asynctls+k", "offload+k", "full"], [256, 512])
    report.write_json(os.path.join(folder, "ruler.json"), {"context": 8192, "model": "m"}, table, results, {})
    out = os.path.join(tmp_path, "merged")
    assert ruler.main(["--merge", folder, "--out", out, "--tasks", "a", "--agreement", "full"]) == 0
    stored = json.load(open(os.path.join(out, "ruler.json")))
    assert stored["agreement"] == {"reference": "full", "runs": report.agreement(results, "full")}
    assert "answers identical to full's:" in open(os.path.join(out, "table.txt")).read()
    with pytest.raises(SystemExit, match="--agreement 'nope' is not a method of this sweep"):
        ruler.main(["--merge", folder, "--out", out, "--tasks", "a", "--agreement", "nope"])
