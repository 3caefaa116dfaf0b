"""Turn per-sample results into one table (task x method x budget), a JSON file and a PNG plot.

Scores are fractions in [0, 1]. A method with budget None (full attention, or one server given
by --url) does not depend on the budget: it is shown in every budget's column group.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from statistics import mean
from typing import Any, NamedTuple

AVERAGE = "average"


class SampleResult(NamedTuple):
    task: str
    method: str
    budget: int | None
    sample_index: int
    prediction: str
    references: list[str]
    score: float
    elapsed_s: float
    prompt_tokens: int  # RULER's length count (prompt + tokens_to_generate)


class Column(NamedTuple):
    method: str
    budget: int | None  # the budget group this column is shown under
    shared: bool = False  # the method's score is budget-independent (repeated in every group)

    @property
    def label(self) -> str:
        return self.method if self.budget is None or self.shared else f"{self.method}@{self.budget}"


class Table(NamedTuple):
    columns: list[Column]
    rows: list[tuple[str, list[float | None]]]  # (task or AVERAGE, one score per column)


#: (task, method, budget); budget None means budget-independent.
ScoreKey = tuple[str, str, int | None]


def task_scores(results: Sequence[SampleResult]) -> dict[ScoreKey, float]:
    """Mean sample score per (task, method, budget)."""
    grouped: dict[ScoreKey, list[float]] = {}
    for result in results:
        grouped.setdefault((result.task, result.method, result.budget), []).append(result.score)
    return {key: mean(values) for key, values in grouped.items()}


def build_table(scores: Mapping[ScoreKey, float], tasks: Sequence[str],
                methods: Sequence[str], budgets: Sequence[int | None]) -> Table:
    """One row per task plus the average; columns are budgets x methods.

    A method whose scores are stored with budget None fills its column in every budget group.
    A column's average is None unless every task has a score (a failed run is not averaged).
    """
    shared = {method for (_, method, budget) in scores if budget is None}
    columns = [Column(method, budget, method in shared) for budget in budgets for method in methods]
    rows: list[tuple[str, list[float | None]]] = []
    for task in tasks:
        rows.append((task, [scores.get((task, c.method, None if c.shared else c.budget))
                            for c in columns]))
    averages: list[float | None] = []
    for i in range(len(columns)):
        values = [row[i] for _, row in rows]
        complete = [v for v in values if v is not None]
        averages.append(mean(complete) if complete and len(complete) == len(values) else None)
    rows.append((AVERAGE, averages))
    return Table(columns, rows)


def format_table(table: Table) -> str:
    """Fixed-width text: a budget header row, a method header row, tasks, then the average."""
    budgets = ["budget", *["-" if c.budget is None else str(c.budget) for c in table.columns]]
    methods = ["task", *[c.method for c in table.columns]]
    body = [[name, *["-" if v is None else f"{v:.3f}" for v in values]] for name, values in table.rows]
    lines = [budgets, methods, *body]
    widths = [max(len(line[i]) for line in lines) for i in range(len(methods))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                         for i, cell in enumerate(cells))

    rule = "-" * len(render(methods))
    return "\n".join([render(budgets), render(methods), rule, *[render(r) for r in body[:-1]],
                      rule, render(body[-1])])


def agreement(results: Sequence[SampleResult], reference: str) -> dict[str, dict[str, int]]:
    """Per run (method@budget) other than `reference`'s: of the samples both answered, how many
    answer texts are identical to the reference method's for the same task and sample (at the
    same budget, or the reference's budget-independent answer). Scores can agree while answers
    differ; this counts the answers (e.g. offload on against off, where the pipeline's late
    blocks may change a token). Raises ValueError when `reference` answered nothing."""
    answers: dict[tuple[str, int, int | None], str] = {
        (r.task, r.sample_index, r.budget): r.prediction for r in results if r.method == reference}
    if not answers:
        raise ValueError(f"--agreement {reference!r}: no answers of that method "
                         f"(methods: {', '.join(sorted({r.method for r in results}))})")
    out: dict[str, dict[str, int]] = {}
    for r in results:
        if r.method == reference:
            continue
        mine = answers.get((r.task, r.sample_index, r.budget), answers.get((r.task, r.sample_index, None)))
        if mine is None:
            continue
        label = r.method if r.budget is None else f"{r.method}@{r.budget}"
        count = out.setdefault(label, {"equal": 0, "compared": 0})
        count["compared"] += 1
        count["equal"] += mine == r.prediction
    return out


def format_agreement(counts: Mapping[str, Mapping[str, int]], reference: str) -> str:
    return "\n".join([f"answers identical to {reference}'s:"] + [
        f"  {label}: {c['equal']}/{c['compared']}" for label, c in sorted(counts.items())])


def table_json(table: Table) -> list[dict[str, Any]]:
    """One entry per (task, method, budget); a shared (budget-independent) score once, budget None."""
    entries: dict[tuple[str, str, int | None], dict[str, Any]] = {}
    for name, values in table.rows:
        for column, value in zip(table.columns, values):
            budget = None if column.shared else column.budget
            entries[(name, column.method, budget)] = {
                "task": name, "method": column.method, "budget": budget, "score": value}
    return list(entries.values())


def write_json(path: str, config: Mapping[str, Any], table: Table,
               results: Sequence[SampleResult], timings: Mapping[str, Any],
               agreement: Mapping[str, Any] | None = None) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {
        "config": dict(config),
        "table": table_json(table),
        "table_text": format_table(table),
        "timings": dict(timings),
        "samples": [result._asdict() for result in results],
    }
    if agreement is not None:
        payload["agreement"] = dict(agreement)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=1)


def read_json(path: str) -> tuple[dict[str, Any], list[SampleResult]]:
    """What write_json wrote: the payload and its per-sample results."""
    with open(path) as handle:
        payload = json.load(handle)
    return payload, [SampleResult(**record) for record in payload["samples"]]


def plot(path: str, table: Table, title: str) -> None:
    """Left: average score against budget (shared methods as dashed lines). Right: per-task bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in table.rows]
    average = table.rows[-1][1]
    budgets = list(dict.fromkeys(c.budget for c in table.columns))
    positions = list(range(len(budgets)))
    bars = _first_per_label(table)

    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 2.4]})
    for method in dict.fromkeys(c.method for c in table.columns):
        values = [average[i] for i, c in enumerate(table.columns) if c.method == method]
        ys = [float("nan") if v is None else v for v in values]
        if any(c.shared for c in table.columns if c.method == method):
            left.axhline(ys[0], linestyle="--", color="gray", label=method)
        else:
            left.plot(positions[: len(ys)], ys, marker="o", label=method)
    left.set_xticks(positions, [str(b) if b is not None else "-" for b in budgets])
    left.set_xlabel("token budget")
    left.set_ylabel(f"{AVERAGE} score")
    left.set_ylim(-0.02, 1.02)
    left.grid(alpha=0.3)
    left.legend()

    width = 0.8 / max(len(bars), 1)
    for k, i in enumerate(bars):
        values = [row[1][i] for row in table.rows]
        xs = [x + (k - (len(bars) - 1) / 2) * width for x in range(len(names))]
        right.bar(xs, [0.0 if v is None else v for v in values], width, label=table.columns[i].label)
    right.set_xticks(range(len(names)), names, rotation=30, ha="right")
    right.set_ylim(0, 1.05)
    right.set_ylabel("score")
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize="small", ncol=max(1, len(budgets)))
    figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _first_per_label(table: Table) -> list[int]:
    """Column indices with each label once (a shared method appears in every budget group)."""
    seen: dict[str, int] = {}
    for i, column in enumerate(table.columns):
        seen.setdefault(column.label, i)
    return list(seen.values())
