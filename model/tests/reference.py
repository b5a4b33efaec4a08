"""Reference side of tailor-model's cross-checks, run by the Rust integration tests.

Everything numerical that tailor is compared against comes from Hugging Face `transformers`
and `peft` here. Subcommands:

  fixtures DIR [NAME...]
                      tiny random checkpoints sharing one tokenizer, each written by its
                      family's own config class (FAMILIES below: llama_gqa, qwen2, qwen3, and
                      Llama 3.x / rope variants, Mistral, Gemma 2/3, Phi-3/4, Qwen3-MoE), each
                      with reference.safetensors (input_ids, logits, logits_bf16, peft_logits,
                      and a greedy generation: gen_prompt, gen_ids, gen_top_ids,
                      gen_top_logprobs) and a PEFT adapter (peft_adapter/).
  peft-load MODEL ADAPTER OUT
                      loads a tailor-written adapter with PeftModel.from_pretrained, checks there
                      are no missing/unexpected keys, writes logits for MODEL/reference input_ids.
  base-model OUT DATA VOCAB HIDDEN LAYERS HEADS KV_HEADS INTERMEDIATE [MODEL_VOCAB [FAMILY]]
                      a random model (Llama, or FAMILY as in FAMILIES) with a tokenizer
                      trained on the chat JSONL DATA.
  sharded-bf16 OUT LAYERS HIDDEN SHARD_MB
                      a random Llama saved in bf16 as shards of at most SHARD_MB each
                      (model.safetensors.index.json).
  chat-templates IN OUT
                      renders the conversations of IN (JSON: templates with their special
                      tokens, conversations) with apply_chat_template; writes OUT (JSON).
  peft-init MODEL OUT TARGETS R ALPHA SEED
                      a fresh PEFT adapter (PEFT's initialisation), saved.
  train MODEL ADAPTER BATCHES OUT
                      PyTorch + PEFT training on the batches tailor-trainer dumped, from the given
                      initial adapter; writes per-step losses (JSON) and the final adapter.
  many FILE           the commands listed in the JSON file FILE ([[COMMAND, ARG...], ...]), one
                      after another in this process: a suite with a cross-check per model family
                      starts Python, torch, transformers and peft once (~10 CPU-seconds a start
                      on the 2-core VM), not once per family.
"""

import json
import math
import os
import sys
import time

import torch

torch.use_deterministic_algorithms(False)

CORPUS = [
    "hello world, this is a tiny corpus for a tiny tokenizer.",
    "the quick brown fox jumps over the lazy dog.",
    "How do I reset my password? Go to settings and choose reset.",
    "Thank you! You are welcome. Anything else I can help with?",
    "Lumen boards, tasks, projects, imports and exports.",
    "0123456789 numbers and punctuation: ; , . ! ? ( ) [ ] { }",
]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_texts(path):
    """Every message's content of a chat JSONL file (lines that are not chat examples skipped)."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                texts.extend(m["content"] for m in json.loads(line)["messages"])
            except (ValueError, KeyError, TypeError):
                continue  # the example datasets include deliberately invalid lines
    return texts


def build_tokenizer(out_dir, texts, vocab_size, extra_specials=()):
    """A byte-level BPE trained on `texts`, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [t for t in extra_specials if t not in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "chat_template": CHATML,
            },
            f,
            indent=2,
        )
    return tok


def family_config(family, vocab, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96, max_pos=256, **extra):
    """A tiny config of FAMILY, built with the family's own config class."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_pos,
        initializer_range=0.08,
        rms_norm_eps=1e-5,
        eos_token_id=2,
        bos_token_id=None,
        pad_token_id=0,
    )
    common.update(extra)
    head_dim = hidden // heads
    rotary_pairs = lambda partial=1.0: int(head_dim * partial) // 2
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=8, head_dim=head_dim)
    if family == "gemma2":
        return Gemma2Config(
            **{**common, "num_hidden_layers": max(layers, 4)},
            head_dim=head_dim,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=5.0,
        )
    if family == "gemma3":
        n = max(layers, 4)
        return Gemma3TextConfig(
            **{**common, "num_hidden_layers": n},
            head_dim=head_dim,
            query_pre_attn_scalar=24,
            sliding_window=8,
            final_logit_softcapping=5.0,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        )
    if family in ("phi3", "phi4_mini"):
        partial = 0.75 if family == "phi4_mini" else 1.0
        n = rotary_pairs(partial)
        original = common.pop("original_max_position_embeddings", 16)
        return Phi3Config(
            **common,
            original_max_position_embeddings=original,
            partial_rotary_factor=partial,
            sliding_window=24 if family == "phi3" else None,
            tie_word_embeddings=family == "phi4_mini",
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0 + 0.05 * i for i in range(n)],
                "long_factor": [1.5 + 0.5 * i for i in range(n)],
            },
        )
    if family == "qwen3_moe":
        return Qwen3MoeConfig(
            **common,
            head_dim=head_dim,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            mlp_only_layers=[layers - 1],
        )
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(**common)
    raise SystemExit(f"unknown family {family}")


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name: (family, config overrides, sequence length, LoRA targets). Sequences are longer than
# every sliding window, every LongRoPE original context and every dynamic-NTK limit.
FAMILIES = {
    "llama_gqa": ("llama", dict(tie_word_embeddings=False, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0), 13, ALL_PROJECTIONS),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1000000.0), 13, ALL_PROJECTIONS),
    "qwen3": ("qwen3", dict(num_key_value_heads=1, head_dim=32, tie_word_embeddings=False), 13, ALL_PROJECTIONS),
    "llama32_tied": ("llama", dict(tie_word_embeddings=True, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0), 40, ALL_PROJECTIONS),
    "llama_linear": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), 40, ["q_proj", "v_proj"]),
    "llama_dynamic": ("llama", dict(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 40, ["q_proj", "v_proj"]),
    "llama_yarn": ("llama", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}), 40, ["q_proj", "v_proj"]),
    "mistral": ("mistral", dict(), 40, ALL_PROJECTIONS),
    "gemma2": ("gemma2", dict(), 40, ALL_PROJECTIONS),
    "gemma3": ("gemma3", dict(), 40, ALL_PROJECTIONS),
    "phi3": ("phi3", dict(max_position_embeddings=64), 40, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "phi4_mini": ("phi4_mini", dict(max_position_embeddings=64), 40, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "qwen3_moe": ("qwen3_moe", dict(), 40, ["q_proj", "k_proj", "v_proj", "o_proj"]),
}


def named_config(name, vocab):
    """The config of FAMILIES[name] (other test suites build their models from these)."""
    family, overrides, _, _ = FAMILIES[name]
    return family_config(family, vocab, **overrides)


def attn_implementation(cfg):
    # Gemma 2's soft-capping needs the eager path (sdpa cannot cap scores).
    return "eager" if cfg.model_type == "gemma2" else "sdpa"


def make_model(cfg, seed):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation(cfg)).float().eval()
    # Biases are zero-initialised by transformers; make them count. Routers too: a zero router
    # ties every expert, and top-k of ties is not a reference for anything.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("mlp.gate.weight"):
                p.add_(torch.randn_like(p) * 0.5)
    return model


def peft_model(model, seed, nonzero_b=True, targets=None, r=4, alpha=8):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets or ALL_PROJECTIONS,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    pm = get_peft_model(model, cfg)
    if nonzero_b:
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.1)
    return pm


def greedy(model, prompt, steps, k=5):
    """HF generate, greedy, with its KV cache; the chosen ids and each step's top-k logprobs."""
    model.generation_config.eos_token_id = None  # never stop early
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    ids = out.sequences[0, prompt.shape[1]:]
    logprobs = torch.stack([l[0].float().log_softmax(-1) for l in out.logits])
    top = logprobs.topk(k, dim=-1)
    return ids, top.indices, top.values


def fixtures(out, *names):
    from safetensors.torch import save_file

    tok = build_tokenizer(os.path.join(out, "tokenizer"), CORPUS, 400)
    vocab = tok.get_vocab_size()
    for i, (name, (family, overrides, seq, targets)) in enumerate(FAMILIES.items()):
        if names and name not in names:
            continue
        torch.manual_seed(0)
        input_ids = torch.randint(0, vocab, (2, seq))
        cfg = family_config(family, vocab, **overrides)
        d = os.path.join(out, name)
        model = make_model(cfg, 100 + i)
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            with open(os.path.join(out, "tokenizer", f)) as src, open(os.path.join(d, f), "w") as dst:
                dst.write(src.read())
        with torch.no_grad():
            logits = model(input_ids).logits.float()
        prompt = input_ids[:1, :8].clone()
        # LongRoPE: transformers drops the KV cache and recomputes the sequence when it first
        # passes the original context; tailor's cache does not (yet), so decode stays below it.
        steps = seq - 8 if family not in ("phi3", "phi4_mini") else 16 - 8
        gen_ids, gen_top_ids, gen_top_logprobs = greedy(model, prompt, steps)
        bf16 = make_model(cfg, 100 + i).to(torch.bfloat16)
        bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
        with torch.no_grad():
            logits_bf16 = bf16(input_ids).logits.float()
        pm = peft_model(model, 200 + i, targets=targets)
        pm.save_pretrained(os.path.join(d, "peft_adapter"))
        with torch.no_grad():
            peft_logits = pm(input_ids).logits.float()
        save_file(
            {
                "input_ids": input_ids.contiguous(),
                "logits": logits.contiguous(),
                "logits_bf16": logits_bf16.contiguous(),
                "peft_logits": peft_logits.contiguous(),
                "gen_prompt": prompt.contiguous(),
                "gen_ids": gen_ids.contiguous(),
                "gen_top_ids": gen_top_ids.contiguous(),
                "gen_top_logprobs": gen_top_logprobs.contiguous(),
            },
            os.path.join(d, "reference.safetensors"),
        )
    print(json.dumps({"vocab": vocab}))


def base_model(out, data, vocab, hidden, layers, heads, kv_heads, intermediate, model_vocab="0", family="llama"):
    """A random model whose byte-level BPE tokenizer is trained on the texts of a chat JSONL.
    MODEL_VOCAB pads the embedding/LM-head rows beyond the tokenizer's vocabulary, as released
    models often do (Llama 2 has 32000 rows). FAMILY names a FAMILIES entry (its family and
    overrides); the default is a plain Llama."""
    from transformers import LlamaConfig

    tok = build_tokenizer(out, chat_texts(data), int(vocab))
    if family != "llama":
        fam, overrides, _, _ = FAMILIES[family]
        if fam in ("phi3", "phi4_mini"):
            # Every training sequence past the original context: transformers picks LongRoPE's
            # factors per batch (from its longest row), tailor per sequence; equal when all agree.
            overrides = {**overrides, "max_position_embeddings": 2048, "original_max_position_embeddings": 4}
        cfg = family_config(
            fam,
            max(tok.get_vocab_size(), int(model_vocab)),
            hidden=int(hidden),
            layers=int(layers),
            heads=int(heads),
            kv_heads=int(kv_heads),
            intermediate=int(intermediate),
            max_pos=2048,
            **{**overrides, "eos_token_id": tok.token_to_id("<|im_end|>"), "initializer_range": 0.02},
        )
        make_model(cfg, 1).save_pretrained(out, safe_serialization=True)
        print(json.dumps({"vocab": tok.get_vocab_size()}))
        return
    cfg = LlamaConfig(
        vocab_size=max(tok.get_vocab_size(), int(model_vocab)),
        hidden_size=int(hidden),
        intermediate_size=int(intermediate),
        num_hidden_layers=int(layers),
        num_attention_heads=int(heads),
        num_key_value_heads=int(kv_heads),
        max_position_embeddings=2048,
        initializer_range=0.02,
        tie_word_embeddings=False,
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=0,
        bos_token_id=None,
    )
    make_model(cfg, 1).save_pretrained(out, safe_serialization=True)
    print(json.dumps({"vocab": tok.get_vocab_size()}))


def sharded_bf16(out, layers, hidden, shard_mb):
    """A random Llama in bf16, saved as shards with an index, and its logits for a few tokens."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = family_config(
        "llama", 400, hidden=int(hidden), layers=int(layers), heads=4, kv_heads=2, intermediate=3 * int(hidden)
    )
    model = make_model(cfg, 3).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True, max_shard_size=f"{int(shard_mb)}MB")
    weights = {
        "embed_rows": model.model.embed_tokens.weight[:8].float().contiguous(),
        "last_down_rows": model.model.layers[-1].mlp.down_proj.weight[:8].float().contiguous(),
        "first_k_rows": model.model.layers[0].self_attn.k_proj.weight[:8].float().contiguous(),
    }
    save_file(weights, os.path.join(out, "reference.safetensors"))


CHAT_MARKERS = [
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
    "<s>", "</s>", "[INST]", "[/INST]", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|im_sep|>",
]


def chat_templates(spec_path, out):
    """Renders every template of SPEC (templates.json beside it) on every conversation, with and
    without the generation prompt, through apply_chat_template; and, independently of tailor,
    where each assistant message's content and the end-of-turn token after it lie in the
    rendering (byte offsets). Also writes OUT/../tokenizer: a tokenizer knowing every marker."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    with open(spec_path) as f:
        spec = json.load(f)
    base = os.path.dirname(spec_path)
    results = {}
    for name, t in spec["templates"].items():
        with open(os.path.join(base, name + ".jinja")) as f:
            template = f.read()
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token=t["bos"], eos_token=t["eos"])
        renders, spans = [], []
        for conv in spec["conversations"]:
            pair = []
            for gen in (False, True):
                try:
                    pair.append(tok.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=gen))
                except Exception as e:  # the template refuses the conversation
                    pair.append({"error": str(e)})
            renders.append(pair)
            text = pair[0]
            found = []
            if isinstance(text, str):
                cursor = 0
                for m in conv:
                    if m["role"] != "assistant":
                        continue
                    i = text.index(m["content"], cursor)
                    end = i + len(m["content"])
                    eot = max((len(e) for e in t["end_of_turn"] if text.startswith(e, end)), default=0)
                    found.append([len(text[:i].encode()), len(text[: end + eot].encode())])
                    cursor = end
            spans.append(found)
        results[name] = {"renders": renders, "spans": spans}
    with open(out, "w") as f:
        json.dump(results, f, ensure_ascii=False, indent=1)
    texts = CORPUS + [m["content"] for conv in spec["conversations"] for m in conv]
    build_tokenizer(os.path.join(os.path.dirname(out), "tokenizer"), texts, 400, CHAT_MARKERS)


def peft_init(model_dir, out, targets, r, alpha, seed):
    """PEFT's own initialisation of a fresh adapter (A kaiming-uniform, B zero), saved."""
    pm = peft_model(load_base(model_dir), int(seed), nonzero_b=False, targets=targets.split(","), r=int(r), alpha=float(alpha))
    pm.save_pretrained(out)


def load_base(model_dir):
    from transformers import AutoModelForCausalLM

    from transformers import AutoConfig

    impl = attn_implementation(AutoConfig.from_pretrained(model_dir))
    return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation=impl).eval()


def peft_load(model_dir, adapter_dir, out):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    base = load_base(model_dir)
    pm = PeftModel.from_pretrained(base, adapter_dir).eval()
    file_sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    expected = set(get_peft_model_state_dict(pm).keys())
    missing = sorted(expected - set(file_sd))
    unexpected = sorted(set(file_sd) - expected)
    result = set_peft_model_state_dict(pm, file_sd)
    unexpected += list(result.unexpected_keys)
    missing += [k for k in result.missing_keys if "lora_" in k]
    ref = load_file(os.path.join(model_dir, "reference.safetensors"))
    with torch.no_grad():
        logits = pm(ref["input_ids"]).logits.float()
    save_file({"logits": logits.contiguous()}, out)
    print(json.dumps({"missing": missing, "unexpected": unexpected}))
    if missing or unexpected:
        sys.exit(1)




def train(model_dir, adapter_dir, batches_path, out_dir):
    """Mirrors tailor-trainer's step: loss = sum of token CE over the optimizer step's counted
    tokens / their number; clip to max_grad_norm; AdamW; LR scheduler stepped once per step."""
    from peft import PeftModel
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    with open(batches_path) as f:
        dump = json.load(f)
    hp = dump["hyperparameters"]
    base = load_base(model_dir)
    pm = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    pm.train()
    params = [p for n, p in pm.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=hp["learningRate"], betas=(0.9, 0.999), eps=1e-8, weight_decay=hp["weightDecay"], foreach=False
    )
    total, warmup = dump["totalSteps"], dump["warmupSteps"]
    sched = {
        "cosine": lambda: get_cosine_schedule_with_warmup(opt, warmup, total),
        "linear": lambda: get_linear_schedule_with_warmup(opt, warmup, total),
        "constant": lambda: get_constant_schedule_with_warmup(opt, warmup),
    }[hp["scheduler"]]()
    losses = []
    tokens = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    for step in dump["steps"]:
        opt.zero_grad(set_to_none=True)
        n_tokens = sum(sum(1 for l in row if l != -100) for mb in step for row in mb["labels"])
        total_loss = 0.0
        for mb in step:
            ids = torch.tensor(mb["input_ids"])
            labels = torch.tensor(mb["labels"])
            tokens += mb.get("tokens", 0)
            logits = pm(ids).logits.float()[:, :-1]
            targets = labels[:, 1:]
            loss_sum = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
            )
            (loss_sum / n_tokens).backward()
            total_loss += loss_sum.item()
        torch.nn.utils.clip_grad_norm_(params, hp["maxGradNorm"])
        opt.step()
        sched.step()
        losses.append(total_loss / n_tokens)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    pm.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "losses.json"), "w") as f:
        json.dump(losses, f)
    print(json.dumps({"losses": losses, "tokens": tokens, "seconds": seconds, "tokensPerSecond": tokens / seconds, "trainCpuSeconds": cpu_seconds}))


def eval_loss(model_dir, adapter_dir, batches_path):
    """Test loss of the base model and of base + adapter (PEFT) on tailor-trainer evaluate's
    dumped batches: summed token CE over every counted token / their number."""
    from peft import PeftModel

    with open(batches_path) as f:
        batches = json.load(f)

    def loss(model):
        total, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                ids, labels = torch.tensor(b["input_ids"]), torch.tensor(b["labels"])
                logits = model(ids).logits.float()[:, :-1]
                targets = labels[:, 1:]
                total += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
                ).item()
                n += int((targets != -100).sum())
        return total / n

    base = load_base(model_dir)
    base_loss = loss(base)
    pm = PeftModel.from_pretrained(base, adapter_dir).eval()
    print(json.dumps({"base": base_loss, "adapter": loss(pm)}))


def many(path):
    with open(path) as f:
        commands = json.load(f)
    for cmd, *args in commands:
        print("reference.py", cmd, *args, file=sys.stderr, flush=True)  # whose failure it is
        COMMANDS[cmd](*args)


COMMANDS = {
    "fixtures": fixtures,
    "peft-load": peft_load,
    "train": train,
    "eval-loss": eval_loss,
    "base-model": base_model,
    "peft-init": peft_init,
    "sharded-bf16": sharded_bf16,
    "chat-templates": chat_templates,
    "many": many,
}

if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("REFERENCE_THREADS", "1")))
    COMMANDS[sys.argv[1]](*sys.argv[2:])
