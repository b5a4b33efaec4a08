"""The official `openai` client against a ModelDeployment's endpoint (status.endpoint).

    serving_client.py ask ENDPOINT QUESTION MODEL [MODEL...] [--system TEXT] [--max-tokens N]
        One chat completion per model (greedy; 16 tokens unless --max-tokens; a system message
        first with --system); prints one JSON object {model: {content, model, usage}}.
        Exits non-zero when any request fails.

    serving_client.py load ENDPOINT MODEL STOP_FILE OUT_FILE [THREADS] [USERS]
        Steady load until STOP_FILE exists: THREADS workers cycle through USERS user ids (the
        router's split is sticky per `user`). Every request is one JSON line in OUT_FILE
        {t, user, ok, status, error, target, revision, model}; the summary goes to stdout.

No retries (`max_retries=0`): the test must see every error the endpoint returns.
"""

import json
import os
import sys
import threading
import time

import openai

QUESTION = "How do I reset my password?"


def client(endpoint):
    return openai.OpenAI(base_url=endpoint, api_key=os.environ.get("OPENAI_API_KEY", "none"), max_retries=0, timeout=60)


def ask(endpoint, question, *models, system=None, max_tokens=16):
    c = client(endpoint)
    out = {}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    for m in models:
        r = c.chat.completions.create(
            model=m,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
        )
        out[m] = {
            "content": r.choices[0].message.content,
            "model": r.model,
            "finish_reason": r.choices[0].finish_reason,
            "usage": r.usage.model_dump() if r.usage else None,
        }
    print(json.dumps(out))


def load(endpoint, model, stop_file, out_file, threads="4", users="40"):
    c = client(endpoint)
    n_users = int(users)
    lock = threading.Lock()
    counts = {"requests": 0, "errors": 0}
    out = open(out_file, "a", buffering=1)

    def worker(k):
        i = k
        while not os.path.exists(stop_file):
            user = f"user-{i % n_users}"
            i += int(threads)
            rec = {"t": time.time(), "user": user}
            try:
                raw = c.chat.completions.with_raw_response.create(
                    model=model,
                    messages=[{"role": "user", "content": QUESTION}],
                    max_tokens=2,
                    temperature=0,
                    user=user,
                )
                r = raw.parse()
                rec.update(ok=True, status=raw.status_code, model=r.model, target=raw.headers.get("x-tailor-target"), revision=raw.headers.get("x-tailor-revision"))
            except openai.APIStatusError as e:
                rec.update(ok=False, status=e.status_code, error=str(e)[:300], target=e.response.headers.get("x-tailor-target"), revision=e.response.headers.get("x-tailor-revision"))
            except Exception as e:  # connection errors, timeouts: errors all the same
                rec.update(ok=False, status=None, error=f"{type(e).__name__}: {e}"[:300], target=None, revision=None)
            rec["done"] = time.time()
            with lock:
                counts["requests"] += 1
                counts["errors"] += 0 if rec["ok"] else 1
                out.write(json.dumps(rec) + "\n")

    ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(int(threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.close()
    print(json.dumps(counts))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ask":
        positional, opts = [], {}
        it = iter(args)
        for a in it:
            if a == "--system":
                opts["system"] = next(it)
            elif a == "--max-tokens":
                opts["max_tokens"] = int(next(it))
            else:
                positional.append(a)
        ask(*positional, **opts)
    else:
        {"load": load}[cmd](*args)
