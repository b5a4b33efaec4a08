"""Load generator for scripts/bench-server.sh: CONCURRENCY workers each send REQUESTS greedy
completions (ignore_eos, fixed max_tokens) to tailor-server, cycling over MODELS; prints
{"tokens", "seconds"} with tokens taken from the responses' usage.

Usage: python3 bench_client.py URL MODELS_CSV CONCURRENCY REQUESTS MAX_TOKENS
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

url, models, conc, reqs, max_tokens = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
PROMPTS = [
    "hello world, this is",
    "the quick brown fox",
    "How do I reset my password?",
    "Thank you! Anything else?",
    "Lumen boards, tasks and projects",
    "numbers and punctuation",
    "the lazy dog jumps",
    "Go to settings and choose",
]


def worker(w):
    s = requests.Session()
    total = 0
    for i in range(reqs):
        n = w * reqs + i
        body = {
            "model": models[w % len(models)],
            "prompt": PROMPTS[n % len(PROMPTS)],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        r = s.post(url + "/v1/completions", json=body, timeout=600)
        r.raise_for_status()
        total += r.json()["usage"]["completion_tokens"]
    return total


# Warm-up: every model once (adapters load on first use).
for m in models:
    worker_models = requests.post(url + "/v1/completions", json={"model": m, "prompt": "hello", "max_tokens": 2}, timeout=600)
    worker_models.raise_for_status()
start = time.perf_counter()
with ThreadPoolExecutor(conc) as ex:
    tokens = sum(ex.map(worker, range(conc)))
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - start}))
