"""The product as a user meets it: `python -m asynctls_sglang.launch_server` on SmolLM2,
the OpenAI-compatible API, multi-turn chat through the radix cache, an SGLang frontend
program, and the backend's stats on /get_server_info. One server for the module."""
from __future__ import annotations


import pytest

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

BUDGET, THRESHOLD = 256, 512


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from asynctls_sglang.eval.server import Server
    from asynctls_sglang.models.smollm2 import ensure_smollm2

    log = str(tmp_path_factory.mktemp("server") / "server.log")
    srv = Server("asynctls_sglang.launch_server", ensure_smollm2(),
                 ["--asynctls-token-budget", str(BUDGET), "--asynctls-block-budget", "16",
                  "--asynctls-dense-threshold", str(THRESHOLD), "--max-total-tokens", "16384"], log)
    srv.start()
    try:
        srv.wait_ready(600)
        yield srv
    finally:
        srv.stop()


def stats(srv) -> dict:
    from asynctls_sglang.eval.client import get_json

    return get_json(srv.url + "/get_server_info", timeout_s=60)["internal_states"][0]["asynctls"]


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="none")


def test_multi_turn_chat_reuses_the_prefix(server, client):
    before = stats(server)
    # the radix cache shares whole pages (64 tokens): a system prompt makes turn 1 span several
    system = ("You are a helpful geography assistant. You answer questions about countries, "
              "capitals, rivers and mountains briefly and correctly, in one sentence. ") * 4
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    first = client.chat.completions.create(model="default", messages=messages, max_tokens=24, temperature=0)
    answer = first.choices[0].message.content
    assert "Paris" in answer
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": "And what is the capital of Italy? One sentence."}]
    second = client.chat.completions.create(model="default", messages=messages, max_tokens=24, temperature=0)
    assert "Rome" in second.choices[0].message.content
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= 128
    after = stats(server)
    # short chats stay below the dense threshold: stock kernel, no sparse step
    assert after["sparse_request_steps"] == before["sparse_request_steps"]
    assert after["dense_request_steps"] > before["dense_request_steps"]


def test_long_prompt_decodes_on_the_budget(server, client):
    before = stats(server)
    words = " ".join(f"item{i}" for i in range(700))
    reply = client.completions.create(model="default", prompt="List: " + words + "\nThe first item is", max_tokens=8,
                                      temperature=0)
    assert reply.usage.prompt_tokens > THRESHOLD
    assert isinstance(reply.choices[0].text, str) and reply.usage.completion_tokens == 8
    after = stats(server)
    assert after["sparse_request_steps"] - before["sparse_request_steps"] >= 7
    assert after["attended_tokens_last"] == BUDGET and after["attended_tokens_min"] == BUDGET


def test_sglang_frontend_program(server):
    import sglang as sgl

    @sgl.function
    def two_questions(s, country):
        s += sgl.user(f"What is the capital of {country}? Answer in one sentence.")
        s += sgl.assistant(sgl.gen("capital", max_tokens=16, temperature=0))
        s += sgl.user("Thank you. Now say hello in one word.")
        s += sgl.assistant(sgl.gen("hello", max_tokens=8, temperature=0))

    backend = sgl.RuntimeEndpoint(server.url)
    state = two_questions.run(country="France", backend=backend)
    assert "Paris" in state["capital"]
    assert state["hello"].strip()
    assert "capital" in state.text() and state["capital"] in state.text()
