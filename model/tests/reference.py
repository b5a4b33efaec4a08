"""Reference side of tailor-model's cross-checks, run by the Rust integration tests.

Everything numerical that tailor is compared against comes from Hugging Face `transformers`
and `peft` here. Subcommands:

  fixtures DIR        tiny random checkpoints (llama_gqa, qwen2, qwen3) sharing one tokenizer,
                      each with reference.safetensors (input_ids, logits) and a PEFT adapter
                      (peft_adapter/) with its logits (peft_logits in reference.safetensors).
  peft-load MODEL ADAPTER OUT
                      loads a tailor-written adapter with PeftModel.from_pretrained, checks there
                      are no missing/unexpected keys, writes logits for MODEL/reference input_ids.
  base-model OUT DATA VOCAB HIDDEN LAYERS HEADS KV_HEADS INTERMEDIATE [MODEL_VOCAB]
                      a random Llama with a tokenizer trained on the chat JSONL DATA.
  peft-init MODEL OUT TARGETS R ALPHA SEED
                      a fresh PEFT adapter (PEFT's initialisation), saved.
  train MODEL ADAPTER BATCHES OUT
                      PyTorch + PEFT training on the batches tailor-trainer dumped, from the given
                      initial adapter; writes per-step losses (JSON) and the final adapter.
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


def build_tokenizer(out_dir, texts, vocab_size):
    """A byte-level BPE trained on `texts`, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
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


def model_configs(vocab):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        initializer_range=0.08,
        rms_norm_eps=1e-5,
        eos_token_id=2,
        bos_token_id=None,
        pad_token_id=0,
    )
    return {
        "llama_gqa": LlamaConfig(
            **common,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            rope_theta=500000.0,
        ),
        "qwen2": Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
        "qwen3": Qwen3Config(**common, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False),
    }


def make_model(cfg, seed):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float().eval()
    # Biases are zero-initialised by transformers; make them count.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def peft_model(model, seed, nonzero_b=True, targets=None, r=4, alpha=8):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
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


def fixtures(out):
    from safetensors.torch import save_file

    tok = build_tokenizer(os.path.join(out, "tokenizer"), CORPUS, 400)
    vocab = tok.get_vocab_size()
    torch.manual_seed(0)
    input_ids = torch.randint(0, vocab, (2, 13))
    for i, (name, cfg) in enumerate(model_configs(vocab).items()):
        d = os.path.join(out, name)
        model = make_model(cfg, 100 + i)
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            with open(os.path.join(out, "tokenizer", f)) as src, open(os.path.join(d, f), "w") as dst:
                dst.write(src.read())
        with torch.no_grad():
            logits = model(input_ids).logits.float()
        pm = peft_model(model, 200 + i)
        pm.save_pretrained(os.path.join(d, "peft_adapter"))
        with torch.no_grad():
            peft_logits = pm(input_ids).logits.float()
        save_file(
            {"input_ids": input_ids.contiguous(), "logits": logits.contiguous(), "peft_logits": peft_logits.contiguous()},
            os.path.join(d, "reference.safetensors"),
        )
    print(json.dumps({"vocab": vocab}))


def base_model(out, data, vocab, hidden, layers, heads, kv_heads, intermediate, model_vocab="0"):
    """A random Llama whose byte-level BPE tokenizer is trained on the texts of a chat JSONL.
    MODEL_VOCAB pads the embedding/LM-head rows beyond the tokenizer's vocabulary, as released
    models often do (Llama 2 has 32000 rows)."""
    from transformers import LlamaConfig

    texts = []
    with open(data, encoding="utf-8") as f:
        for line in f:
            try:
                texts.extend(m["content"] for m in json.loads(line)["messages"])
            except (ValueError, KeyError, TypeError):
                continue  # the example datasets include deliberately invalid lines
    tok = build_tokenizer(out, texts, int(vocab))
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


def peft_init(model_dir, out, targets, r, alpha, seed):
    """PEFT's own initialisation of a fresh adapter (A kaiming-uniform, B zero), saved."""
    pm = peft_model(load_base(model_dir), int(seed), nonzero_b=False, targets=targets.split(","), r=int(r), alpha=float(alpha))
    pm.save_pretrained(out)


def load_base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa").eval()


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


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("REFERENCE_THREADS", "1")))
    cmd, args = sys.argv[1], sys.argv[2:]
    {"fixtures": fixtures, "peft-load": peft_load, "train": train, "base-model": base_model, "peft-init": peft_init}[cmd](*args)
