"""Reference side of tailor-server's cross-checks (run by the Rust integration tests and by
scripts/bench-server.sh). Everything tailor-server is compared against comes from Hugging Face
`transformers` and `peft` here. The tiny-model generators are tailor-model's
(model/tests/reference.py), reused.

  fixtures DIR        tiny Llama (GQA) checkpoint DIR/base, adapters DIR/a0..a3 (PEFT, different
                      ranks/targets) and DIR/other (an adapter for a different base model).
  bench-fixtures DIR  a larger (still small) checkpoint DIR/base and 8 adapters DIR/a0..a7.
  generate MODEL ADAPTER|- REQUESTS_JSON
                      greedy generate for each request {"chat": bool, "prompt": str,
                      "max_tokens": int, "top_logprobs": int}; prints a JSON list of
                      {"text", "ids", "tokens", "logprobs", "top": [[[token, logprob]...]...]}.
  bench MODEL ADAPTERS_CSV|- N_REQUESTS MAX_TOKENS
                      transformers (+PEFT) generate baseline: requests served one at a time, as
                      a server built on `generate` does; prints {"tokens", "seconds"}.
"""

import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "model", "tests"))
import reference as ref  # noqa: E402  (tailor-model's generators)


def copy_tokenizer(src, dst):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(src, f)) as a, open(os.path.join(dst, f), "w") as b:
            b.write(a.read())


ADAPTERS = [
    dict(targets=None, r=4, alpha=8),
    dict(targets=["q_proj", "v_proj"], r=8, alpha=16),
    dict(targets=None, r=2, alpha=4),
    dict(targets=["gate_proj", "up_proj", "down_proj"], r=4, alpha=4),
]


def save_adapters(cfg, out, seed, specs, scale=0.1):
    for i, spec in enumerate(specs):
        model = ref.make_model(cfg, seed)
        pm = ref.peft_model(model, 300 + i, targets=spec["targets"], r=spec["r"], alpha=spec["alpha"])
        if scale != 0.1:
            with torch.no_grad():
                for name, p in pm.named_parameters():
                    if "lora_B" in name:
                        p.mul_(scale / 0.1)
        pm.save_pretrained(os.path.join(out, f"a{i}"))


def fixtures(out):
    tok_dir = os.path.join(out, "tokenizer")
    tok = ref.build_tokenizer(tok_dir, ref.CORPUS, 400)
    vocab = tok.get_vocab_size()
    cfg = ref.named_config("llama_gqa", vocab)
    base = os.path.join(out, "base")
    ref.make_model(cfg, 11).save_pretrained(base, safe_serialization=True)
    copy_tokenizer(tok_dir, base)
    save_adapters(cfg, out, 11, ADAPTERS, scale=0.5)
    other = ref.make_model(ref.named_config("qwen3", vocab), 12)
    pm = ref.peft_model(other, 400)
    pm.save_pretrained(os.path.join(out, "other"))
    print(json.dumps({"vocab": vocab}))


def bench_fixtures(out):
    from transformers import LlamaConfig

    tok_dir = os.path.join(out, "tokenizer")
    tok = ref.build_tokenizer(tok_dir, ref.CORPUS * 4, 400)
    vocab = tok.get_vocab_size()
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        # Room for the benchmark's 2,048-token outputs.
        max_position_embeddings=4096,
        initializer_range=0.05,
        rms_norm_eps=1e-5,
        eos_token_id=2,
        bos_token_id=None,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    base = os.path.join(out, "base")
    ref.make_model(cfg, 21).save_pretrained(base, safe_serialization=True)
    copy_tokenizer(tok_dir, base)
    specs = [dict(targets=None, r=8, alpha=16)] * 8
    save_adapters(cfg, out, 21, specs, scale=0.02)
    print(json.dumps({"vocab": vocab}))


def load(model_dir, adapter_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    if adapter_dir and adapter_dir != "-":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    return tok, model


def encode(tok, req):
    if req["chat"]:
        text = tok.apply_chat_template([{"role": "user", "content": req["prompt"]}], tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    return tok(req["prompt"], return_tensors="pt").input_ids


def generate(model_dir, adapter_dir, requests_path):
    tok, model = load(model_dir, adapter_dir)
    with open(requests_path) as f:
        requests = json.load(f)
    out = []
    for req in requests:
        ids = encode(tok, req)
        with torch.no_grad():
            g = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=req["max_tokens"],
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=0,
                output_logits=True,
                return_dict_in_generate=True,
            )
        new = g.sequences[0, ids.shape[1]:].tolist()
        k = req.get("top_logprobs", 0)
        lps, tops = [], []
        for step, logits in enumerate(g.logits):
            lp = torch.log_softmax(logits[0].float(), -1)
            lps.append(lp[new[step]].item())
            v, i = torch.topk(lp, k) if k else (torch.tensor([]), torch.tensor([], dtype=torch.long))
            tops.append([[tok.decode([t]), x] for t, x in zip(i.tolist(), v.tolist())])
        out.append(
            {
                "text": tok.decode(new, skip_special_tokens=True),
                "ids": new,
                "tokens": [tok.decode([t]) for t in new],
                "logprobs": lps,
                "top": tops,
                "prompt_tokens": ids.shape[1],
            }
        )
    print(json.dumps(out))


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


def bench(model_dir, adapters_csv, n, max_tokens):
    """One request at a time, as a server built on `generate` answers concurrent requests."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n, max_tokens = int(n), int(max_tokens)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    adapters = [a for a in adapters_csv.split(",") if a and a != "-"]
    names = []
    if adapters:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0").eval()
        names.append("a0")
        for i, a in enumerate(adapters[1:], start=1):
            model.load_adapter(a, adapter_name=f"a{i}")
            names.append(f"a{i}")
    reqs = [tok(PROMPTS[i % len(PROMPTS)], return_tensors="pt").input_ids for i in range(n)]

    def run(i, ids):
        if names:
            model.set_adapter(names[i % len(names)])
        with torch.no_grad():
            g = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                pad_token_id=0,
            )
        return g.shape[1] - ids.shape[1]

    run(0, reqs[0])  # warm-up
    start = time.perf_counter()
    total = sum(run(i, ids) for i, ids in enumerate(reqs))
    print(json.dumps({"tokens": total, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("REFERENCE_THREADS", "1")))
    cmd, args = sys.argv[1], sys.argv[2:]
    {"fixtures": fixtures, "bench-fixtures": bench_fixtures, "generate": generate, "bench": bench}[cmd](*args)
