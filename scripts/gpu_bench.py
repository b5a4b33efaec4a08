"""Helpers of scripts/bench-gpu.sh (a benchmark, not a test). Subcommands:

  make-model OUT TOKENIZER_DIR HIDDEN LAYERS HEADS KV_HEADS INTERMEDIATE VOCAB
      A random Llama checkpoint in Hugging Face format (config.json, bf16 model.safetensors,
      the tokenizer files copied from TOKENIZER_DIR), written with torch alone so it runs where
      transformers is not installed. Prints the parameter count.
  peft-train MODEL BATCHES.json RANK ALPHA TARGETS
      PyTorch + PEFT on CUDA in bf16 (adapters in fp32, PEFT's default), replaying exactly the
      micro-batches tailor-trainer dumped; prints tokens/s over the training loop.
  hf-decode MODEL NEW_TOKENS
      transformers generate, greedy, batch 1, bf16 on CUDA; prints decode tokens/s.
  stream-decode URL MODEL NEW_TOKENS
      One streamed completion from an OpenAI-compatible server; prints decode tokens/s measured
      between the first and the last streamed token.
"""

import json
import os
import shutil
import struct
import sys
import time
import urllib.request

import torch

DEV = os.environ.get("BENCH_DEVICE", "cuda")


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def save_safetensors(tensors, path):
    """The safetensors layout: u64 header length, JSON header, raw little-endian data."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        t = t.contiguous().cpu()
        data = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        dtype = {torch.bfloat16: "BF16", torch.float32: "F32"}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def make_model(out, tokenizer_dir, hidden, layers, heads, kv_heads, intermediate, vocab):
    hidden, layers, heads, kv_heads, intermediate, vocab = map(
        int, (hidden, layers, heads, kv_heads, intermediate, vocab)
    )
    os.makedirs(out, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(tokenizer_dir, f)):
            shutil.copy(os.path.join(tokenizer_dir, f), out)
    with open(os.path.join(tokenizer_dir, "config.json")) as f:
        tok_cfg = json.load(f)
    head_dim = hidden // heads
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "bfloat16",
        "eos_token_id": tok_cfg.get("eos_token_id"),
        "pad_token_id": 0,
        "bos_token_id": None,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)

    def w(*shape):
        return (torch.randn(*shape, generator=g, device=dev) * 0.02).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": w(vocab, hidden), "lm_head.weight": w(vocab, hidden)}
    t["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(heads * head_dim, hidden)
        t[p + "self_attn.k_proj.weight"] = w(kv_heads * head_dim, hidden)
        t[p + "self_attn.v_proj.weight"] = w(kv_heads * head_dim, hidden)
        t[p + "self_attn.o_proj.weight"] = w(hidden, heads * head_dim)
        t[p + "mlp.gate_proj.weight"] = w(intermediate, hidden)
        t[p + "mlp.up_proj.weight"] = w(intermediate, hidden)
        t[p + "mlp.down_proj.weight"] = w(hidden, intermediate)
        t[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    save_safetensors(t, os.path.join(out, "model.safetensors"))
    print(json.dumps({"parameters": sum(x.numel() for x in t.values())}))


def peft_train(model_dir, batches_path, rank, alpha, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with open(batches_path) as f:
        dump = json.load(f)
    hp = dump["hyperparameters"]
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, attn_implementation="sdpa").to(DEV)
    pm = get_peft_model(
        base, LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=0.0, target_modules=targets.split(","))
    )
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hp["learningRate"], weight_decay=hp["weightDecay"],
                            fused=params[0].is_cuda)  # the fastest peer: one fused kernel
    losses, tokens = [], 0
    sync()
    started = time.perf_counter()
    for step in dump["steps"]:
        opt.zero_grad(set_to_none=True)
        n_tokens = sum(sum(1 for l in row if l != -100) for mb in step for row in mb["labels"])
        total = 0.0
        for mb in step:
            ids = torch.tensor(mb["input_ids"], device=DEV)
            labels = torch.tensor(mb["labels"], device=DEV)
            tokens += mb.get("tokens", 0)
            logits = pm(ids).logits.float()[:, :-1]
            loss_sum = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
            )
            (loss_sum / n_tokens).backward()
            total += loss_sum.item()
        torch.nn.utils.clip_grad_norm_(params, hp["maxGradNorm"])
        opt.step()
        losses.append(total / n_tokens)
    sync()
    seconds = time.perf_counter() - started
    print(json.dumps({"tokens": tokens, "seconds": seconds, "tokensPerSecond": tokens / seconds,
                      "firstLosses": losses[:5], "peakMemoryGiB": torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else None}))


def hf_decode(model_dir, new_tokens):
    from transformers import AutoModelForCausalLM

    n = int(new_tokens)
    m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).to(DEV).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]], device=DEV)
    with torch.no_grad():
        m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
        sync()
        started = time.perf_counter()
        out = m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync()
    seconds = time.perf_counter() - started
    generated = out.shape[1] - ids.shape[1]
    print(json.dumps({"tokens": generated, "seconds": seconds, "tokensPerSecond": generated / seconds}))


def stream_decode(url, model, new_tokens):
    """Decode rate from the first streamed chunk to the last, counting the tokens the server
    reports in `usage` (a chunk may carry several tokens)."""
    body = json.dumps({"model": model, "prompt": "How do I reset my password?", "max_tokens": int(new_tokens),
                       "temperature": 0, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}}).encode()
    for _ in range(2):  # the first request warms up
        first = last = None
        completion = 0
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices"):
                    last = time.perf_counter()
                    first = first or last
                if chunk.get("usage"):
                    completion = chunk["usage"]["completion_tokens"]
    seconds = last - first
    print(json.dumps({"tokens": completion, "decodeSeconds": seconds, "tokensPerSecond": (completion - 1) / seconds}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"make-model": make_model, "peft-train": peft_train, "hf-decode": hf_decode, "stream-decode": stream_decode}[cmd](*args)
