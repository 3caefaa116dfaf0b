"""The few HTTP calls the harness makes to an SGLang (OpenAI-compatible) server. Stdlib only."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def is_healthy(base_url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def served_model(base_url: str) -> str:
    models = get_json(f"{base_url}/v1/models")["data"]
    return str(models[0]["id"])


def complete(base_url: str, model: str, prompt: str, max_tokens: int, timeout_s: float = 1800.0) -> str:
    """Greedy completion of a raw prompt via /v1/completions; returns the generated text."""
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
    }).encode()
    request = urllib.request.Request(
        f"{base_url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{base_url} answered {error.code}: {error.read()[:500]!r}") from error
    return str(payload["choices"][0]["text"])
