"""``python -m asynctls_sglang.demo``: start the server on the embedded model and chat with it.

Starts ``asynctls_sglang.launch_server`` (SmolLM2-135M-Instruct unless --model-path is
given; budgets small enough that a ~1.5k-token turn decodes sparsely), then holds a three-turn
chat through the OpenAI-compatible API: a short question (dense: below the threshold), a long
document with a question about it (sparse), and a follow-up that reuses the conversation's
prefix from the radix cache. Prints each answer, the cached prompt tokens, and the backend's
own account of how many tokens each sparse decode step attended. Extra arguments go to the
launcher (e.g. --asynctls-token-budget 512).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

from asynctls_sglang.eval.client import get_json
from asynctls_sglang.eval.server import Server

DEMO_FLAGS = ["--asynctls-token-budget", "256", "--asynctls-block-budget", "16", "--asynctls-dense-threshold", "512"]


def haystack(code: str, n_sentences: int = 110, seed: int = 0) -> str:
    rng = random.Random(seed)
    subjects = ["The river", "A small town", "The old library", "Our garden", "The mountain trail", "The harbor"]
    verbs = ["was quiet in", "changed a lot during", "looked beautiful in", "was busy in", "felt cold in"]
    times = ["the spring", "the long winter", "late autumn", "the summer of that year", "the early morning"]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(times)}." for _ in range(n_sentences)]
    lines.insert(n_sentences // 3, f"The secret code for the vault is {code}.")
    return " ".join(lines)


def chat(client, messages, max_tokens=48):
    t0 = time.monotonic()
    reply = client.chat.completions.create(model="default", messages=messages, max_tokens=max_tokens,
                                           temperature=0)
    text = reply.choices[0].message.content
    usage = reply.usage
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) if details else 0
    return text, usage.prompt_tokens, cached or 0, time.monotonic() - t0


def stats(url: str) -> dict:
    info = get_json(url + "/get_server_info", timeout_s=30)
    return info["internal_states"][0].get("asynctls", {})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server")
    args, launcher_args = ap.parse_known_args(argv)
    import openai

    from asynctls_sglang.models.smollm2 import ensure_smollm2

    model = args.model_path or ensure_smollm2()
    log = os.path.join(tempfile.gettempdir(), f"asynctls_demo_{os.getpid()}.log")
    server = Server("asynctls_sglang.launch_server", model, DEMO_FLAGS + launcher_args, log)
    print(f"[demo] starting the server on {model} (log: {log}) ...", flush=True)
    server.start()
    try:
        print(f"[demo] server ready after {server.wait_ready(args.timeout):.0f} s at {server.url}", flush=True)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        code = "7421"
        turns = [
            "Hello! In one short sentence, what is the capital of France?",
            "Read this document.\n\n" + haystack(code) + "\n\nWhat is the secret code for the vault? "
            "Answer with the number only.",
            "Thanks. Repeat the code once more, then say goodbye.",
        ]
        messages: list[dict] = []
        for i, turn in enumerate(turns, 1):
            messages.append({"role": "user", "content": turn})
            before = stats(server.url)
            text, prompt, cached, secs = chat(client, messages)
            after = stats(server.url)
            messages.append({"role": "assistant", "content": text})
            sparse_steps = after.get("sparse_request_steps", 0) - before.get("sparse_request_steps", 0)
            shown = turn if len(turn) < 120 else turn[:60] + f" ... [{len(turn)} chars] ... " + turn[-60:]
            print(f"\n[turn {i}] user: {shown}\n[turn {i}] assistant: {text}")
            print(f"[turn {i}] prompt tokens {prompt}, cached (radix) {cached}, {secs:.1f} s, "
                  f"sparse decode steps {sparse_steps}, tokens attended per step "
                  f"{after.get('attended_tokens_last') if sparse_steps else 'all (dense)'}", flush=True)
        print("\n[demo] backend stats: " + json.dumps({k: v for k, v in stats(server.url).items() if k != "config"}))
        found = code in messages[3]["content"]
        print(f"[demo] needle {'found' if found else 'NOT found'} by the sparse decode", flush=True)
        return 0
    finally:
        server.stop()
        print("[demo] server stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
