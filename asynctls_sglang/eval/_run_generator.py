"""Runs one RULER generator script in this process, as `python SCRIPT ARGS...` would.

    python -m asynctls_sglang.eval._run_generator SCRIPT [ARGS...]

The essay-haystack tasks call nltk.sent_tokenize, whose `punkt_tab` data is a download; an
untrained PunktSentenceTokenizer needs no data and splits English prose well enough for
placing needles between sentences, so it replaces sent_tokenize before the script imports it.
"""
from __future__ import annotations

import os
import runpy
import sys


def _patch_sent_tokenize() -> None:
    import nltk
    import nltk.tokenize
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    splitter = PunktSentenceTokenizer()

    def sent_tokenize(text: str, language: str = "english") -> list[str]:
        return list(splitter.tokenize(text))

    nltk.sent_tokenize = sent_tokenize
    nltk.tokenize.sent_tokenize = sent_tokenize


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m asynctls_sglang.eval._run_generator SCRIPT [ARGS...]")
    script = os.path.abspath(argv[0])
    _patch_sent_tokenize()
    # As `python script.py` does: argv[0] is the script and its folder is first on sys.path
    # (the scripts import `constants` and `tokenizer` as top-level modules).
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
