"""Talks to tailor-router with the official `openai` client.

Usage: python3 openai_client.py BASE_URL API_KEY
Checks models list, a chat completion, a streamed chat completion, an unknown model (404) and a
bad key (401); prints one JSON line with what it saw.
"""

import json
import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)

models = [m.id for m in client.models.list().data]
assert models == ["bot"], models

chat = client.chat.completions.create(
    model="bot", messages=[{"role": "user", "content": "hi"}], user="alice"
)
content = chat.choices[0].message.content
assert content.startswith("served by "), content
assert chat.usage.total_tokens == 6, chat.usage

chunks = []
stream = client.chat.completions.create(
    model="bot", messages=[{"role": "user", "content": "hi"}], stream=True, user="alice"
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        chunks.append(chunk.choices[0].delta.content)
streamed = "".join(chunks).strip()
assert streamed == content, (streamed, content)

try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
    assert e.body["code"] == "model_not_found", e.body

bad = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=30)
try:
    bad.models.list()
    raise AssertionError("bad key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401

print(json.dumps({"models": models, "chat": content, "stream_chunks": len(chunks), "served": chat.model}))
