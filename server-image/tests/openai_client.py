"""Talks to tailor-server with the official `openai` client.

Usage: python3 openai_client.py BASE_URL BASE_MODEL ADAPTER
Checks models list, a chat completion, a streamed chat completion (equal to the non-streamed one
under greedy decoding), a completion with logprobs, an unknown model (404 error object) and a
bad request (400); prints one JSON line with what it saw.
"""

import json
import sys

import openai

base_url, base_model, adapter = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

models = sorted(m.id for m in client.models.list().data)
assert base_model in models and adapter in models, models

messages = [{"role": "user", "content": "hello world"}]
chat = client.chat.completions.create(model=adapter, messages=messages, temperature=0, max_tokens=10, user="alice")
content = chat.choices[0].message.content
assert chat.model == adapter, chat.model
assert chat.choices[0].finish_reason in ("stop", "length"), chat.choices[0].finish_reason
assert chat.usage.completion_tokens >= 1 and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, chat.usage

chunks = []
finish = None
usage = None
stream = client.chat.completions.create(
    model=adapter, messages=messages, temperature=0, max_tokens=10, stream=True, stream_options={"include_usage": True}
)
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            chunks.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
streamed = "".join(chunks)
assert streamed == content, (streamed, content)
assert finish == chat.choices[0].finish_reason, finish
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage

comp = client.completions.create(model=base_model, prompt="the quick brown", max_tokens=5, temperature=0, logprobs=3)
lp = comp.choices[0].logprobs
assert len(lp.tokens) == comp.usage.completion_tokens, (lp.tokens, comp.usage)
# Keyed by token text: byte tokens of partial UTF-8 all read "\ufffd" and can collide.
assert all(1 <= len(t) <= 3 for t in lp.top_logprobs), lp.top_logprobs
assert all(x <= 0 for x in lp.token_logprobs), lp.token_logprobs

# `stop`: the text ends before the first occurrence, finish_reason "stop", streamed or not.
full = client.completions.create(
    model=base_model, prompt="the quick brown", max_tokens=16, temperature=0, extra_body={"ignore_eos": True}
).choices[0].text
assert len(full) >= 7, full
stop = full[4:7]
cut = full[: full.index(stop)]
stopped = client.completions.create(
    model=base_model, prompt="the quick brown", max_tokens=16, temperature=0, stop=[stop], extra_body={"ignore_eos": True}
).choices[0]
assert (stopped.text, stopped.finish_reason) == (cut, "stop"), (stopped, full, stop)
pieces = []
for chunk in client.completions.create(
    model=base_model, prompt="the quick brown", max_tokens=16, temperature=0, stop=stop, stream=True, extra_body={"ignore_eos": True}
):
    pieces.extend(c.text for c in chunk.choices)
assert "".join(pieces) == cut, (pieces, full, stop)

# vLLM's structured-output choice, as the client sends it (extra_body): the answer is one of them.
verdicts = ['{"winner": "A"}', '{"winner": "B"}', '{"winner": "tie"}']
for extra in ({"structured_outputs": {"choice": verdicts}}, {"guided_choice": verdicts}):
    judged = client.chat.completions.create(model=base_model, messages=messages, max_tokens=32, temperature=0, extra_body=extra)
    assert judged.choices[0].message.content in verdicts, judged
    assert judged.choices[0].finish_reason == "stop", judged

# An unsupported parameter is refused by name.
try:
    client.chat.completions.create(model=base_model, messages=messages, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    raise AssertionError("tools accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "tools", e.body

try:
    client.chat.completions.create(model="nope", messages=messages)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
    assert e.body["code"] == "model_not_found", e.body
    assert e.body["type"] == "invalid_request_error", e.body

try:
    client.chat.completions.create(model=base_model, messages=messages, max_tokens=0)
    raise AssertionError("max_tokens=0 accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400
    assert e.body["param"] == "max_tokens", e.body

print(json.dumps({"models": models, "chat": content, "stream_chunks": len(chunks), "completion": comp.choices[0].text}))
