"""RULER's scores, as fractions in [0, 1] (RULER reports the same numbers x100).

string_match_all: the fraction of reference strings found (case-insensitive) in the
prediction. string_match_part: 1 if any reference is found. Predictions are cleaned first as
RULER does: strip, control characters to newlines, strip again.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str | None) -> str:
    if text is None:
        return ""
    return _CONTROL_CHARS.sub("\n", text.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    found = _found(prediction, references)
    return sum(found) / len(found)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    return float(any(_found(prediction, references)))


def _found(prediction: str, references: Sequence[str]) -> list[bool]:
    if not references:
        raise ValueError("a sample needs at least one reference answer")
    lowered = clean_prediction(prediction).lower()
    return [reference.lower() in lowered for reference in references]


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
}


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
    return METRICS[metric](prediction, references)
