"""Pre-trains the local demo's base model on English text the machine already has.

    pretrain_base.py OUT CHAT_JSONL [--steps N] [--seed S] ...

A fresh model writes noise, so a LoRA trained on top of it has nothing to adapt and the demo's
"before" and "after" answers are both gibberish. This makes a small Llama that writes words, on
CPU, in about two minutes on two cores, with no network: full-parameter causal-LM training with AdamW on
licences and manuals found under /usr/share (common-licenses, doc/*/copyright, info manuals, man
pages as a fallback), with a byte-level BPE tokenizer trained on that text plus the chat data.

The checkpoint is written in the Hugging Face format tailor loads (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json with the ChatML template and special
tokens of `model/tests/reference.py base-model`, so the rest of the demo is unchanged). Every
choice is seeded and the number of steps is fixed, so a run is reproducible on a given machine
(the corpus is whatever packages installed there); the held-out losses at the start and the end,
the corpus size and the time go to stdout (last line: one JSON object).
"""

import argparse
import glob
import gzip
import hashlib
import json
import math
import os
import random
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "tests"))
from reference import build_tokenizer, chat_texts  # noqa: E402  (the ChatML template and special tokens)

# Where English prose lives on a Debian/Ubuntu machine, in the order they are read. Licences are
# always there (base-files); the rest is read when present and skipped when not.
SOURCES = [
    "/usr/share/common-licenses/*",
    "/usr/share/info/*.info*",
    "/usr/share/doc/*/copyright",
]
MAN_PAGES = "/usr/share/man/man[1-8]/*"
MIN_CHARS = 1_500_000


def read_text(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
        return raw.decode("utf-8", errors="ignore")
    except (OSError, EOFError, gzip.BadGzipFile, ValueError):
        return ""


TROFF_ESCAPES = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&|^%e-]|\\s[+-]?\d")


def strip_troff(text):
    """Man page source to plain text: drops requests and comments, keeps the text lines."""
    out = []
    for line in text.splitlines():
        if line.startswith((".\\\"", "'\\\"")):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"^[.'](?:B|I|BI|BR|IR|RB|RI|IB|SH|SS)\s+(.*)$", line)
            if m:
                out.append(m.group(1).replace('"', ""))
            elif re.match(r"^[.'](?:PP|P|LP|TP|IP|sp|br)\b", line):
                out.append("")
            continue
        out.append(line)
    return TROFF_ESCAPES.sub("", "\n".join(out))


def paragraphs(text):
    """Blank-line separated paragraphs, each on one line; tables, lists of names and code
    (few letters, few words) are dropped."""
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "\n", text)  # info files' node separators
    for block in re.split(r"\n\s*\n", text):
        lines = [l.strip() for l in block.splitlines()]
        lines = [l for l in lines if l and not l.startswith(("File: ", "* Menu:", "Tag Table:", "Node: "))]
        p = re.sub(r"\s+", " ", " ".join(lines)).strip()
        words = p.split()
        if len(words) < 8 or len(p) > 4000:
            continue
        letters = sum(c.isalpha() or c == " " for c in p)
        if letters < 0.85 * len(p):
            continue
        yield p


def corpus(max_chars, seed):
    """Deduplicated English paragraphs from SOURCES (man pages only when those are short),
    shuffled with SEED and cut to MAX_CHARS; and the files they came from."""
    seen, paras, files, chars = set(), [], 0, 0

    def add(text):
        nonlocal files, chars
        before = len(paras)
        for p in paragraphs(text):
            h = hashlib.sha1(p.encode()).digest()
            if h not in seen:
                seen.add(h)
                paras.append(p)
                chars += len(p)
        files += len(paras) > before

    for pattern in SOURCES:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                add(read_text(path))
    if chars < MIN_CHARS:  # a machine without manuals: man pages then
        for path in sorted(glob.glob(MAN_PAGES)):
            if os.path.isfile(path):
                add(strip_troff(read_text(path)))
            if chars >= max_chars:
                break
    random.Random(seed).shuffle(paras)
    out, n = [], 0
    for p in paras:
        if n >= max_chars:
            break
        out.append(p)
        n += len(p) + 1
    return out, files



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("chat_jsonl", help="chat data whose texts join the tokenizer's training text (not the LM's)")
    ap.add_argument("--vocab", type=int, default=3072)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=352)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--max-chars", type=int, default=4_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    paras, files = corpus(args.max_chars, args.seed)
    chars = sum(len(p) for p in paras)
    if chars < 100_000:
        raise SystemExit(f"only {chars} characters of English text found under /usr/share")
    tok = build_tokenizer(args.out, paras + chat_texts(args.chat_jsonl), args.vocab)
    ids = []
    for enc in tok.encode_batch([p + "\n\n" for p in paras]):
        ids.extend(enc.ids)
    n_chunks = len(ids) // args.seq
    data = torch.tensor(ids[: n_chunks * args.seq], dtype=torch.long).view(n_chunks, args.seq)
    held_out = max(8, n_chunks // 100)
    perm = torch.randperm(n_chunks, generator=torch.Generator().manual_seed(args.seed))
    valid, train = data[perm[:held_out]], data[perm[held_out:]]
    print(
        f"corpus ({time.perf_counter() - started:.0f} s): {chars / 1e6:.1f} M characters from {files} files under /usr/share, {len(ids) / 1e6:.2f} M tokens "
        f"(vocab {tok.get_vocab_size()}), {len(train)} sequences of {args.seq} (+{held_out} held out)",
        flush=True,
    )

    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        initializer_range=0.02,
        tie_word_embeddings=False,
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=0,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).float()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step):  # linear warmup, cosine down to a tenth
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def held_out_loss():
        model.eval()
        with torch.no_grad():
            loss = sum(model(input_ids=b, labels=b).loss.item() for b in valid.split(args.batch)) / math.ceil(
                len(valid) / args.batch
            )
        model.train()
        return loss

    order = torch.Generator().manual_seed(args.seed + 1)
    start_loss = held_out_loss()
    print(f"pretraining: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {args.steps} steps of {args.batch} x {args.seq} tokens on {args.threads} threads", flush=True)
    print(f"  step 0: held-out loss {start_loss:.3f}", flush=True)
    model.train()
    t_train, cpu_train = time.perf_counter(), time.process_time()
    window = []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        batch = train[torch.randint(0, len(train), (args.batch,), generator=order)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(f"  step {step + 1}: train loss {sum(window) / len(window):.3f} ({time.perf_counter() - t_train:.0f} s)", flush=True)
            window = []
    train_seconds, train_cpu = time.perf_counter() - t_train, time.process_time() - cpu_train
    end_loss = held_out_loss()
    print(f"  held-out loss {start_loss:.3f} -> {end_loss:.3f} in {train_seconds:.0f} s of training ({train_cpu:.0f} s CPU)", flush=True)

    model.eval()
    model.save_pretrained(args.out, safe_serialization=True)
    # A taste of what it writes (greedy, from a licence-like prompt).
    prompt = tok.encode("The software is").ids
    with torch.no_grad():
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=None)
    sample = tok.decode(gen[0].tolist())
    print(f"  sample: {sample!r}", flush=True)
    print(
        json.dumps(
            {
                "vocab": tok.get_vocab_size(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "corpusCharacters": chars,
                "tokens": len(ids),
                "steps": args.steps,
                "heldOutLossStart": round(start_loss, 4),
                "heldOutLossEnd": round(end_loss, 4),
                "trainSeconds": round(train_seconds, 1),
                "trainCpuSeconds": round(train_cpu, 1),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
