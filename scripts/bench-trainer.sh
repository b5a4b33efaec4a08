#!/usr/bin/env bash
# Trains the same LoRA on the same tiny-but-not-trivial Llama (4 layers, hidden 256, GQA) with
# tailor-trainer and with PyTorch + PEFT, on the same batches and threads, and prints tokens/s,
# the ratio and peak RSS of each. A benchmark, not a test: nothing is asserted.
#
#   scripts/bench-trainer.sh                 # CPU, $BENCH_THREADS threads (default: nproc)
#   BENCH_STEPS=30 BENCH_HIDDEN=512 BENCH_LAYERS=8 scripts/bench-trainer.sh
#   TAILOR_TRAINER_BIN=path/to/tailor-trainer scripts/bench-trainer.sh   # skip the cargo build
#
# Both sides see identical work: tailor-trainer dumps the micro-batches it trained on, the PEFT
# loop replays exactly those (model/tests/reference.py train). tokens/s counts non-padding tokens
# over the training loop only (model loading excluded on both sides). Peak RSS is the whole
# process's maximum resident set (GNU time). tokens/CPU-s divides by the loop's CPU time (all
# threads), which stays meaningful when other work shares the machine; wall tokens/s does not.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
eval "$("$root/scripts/setup-libtorch.sh")"

threads="${BENCH_THREADS:-$(nproc)}"
steps="${BENCH_STEPS:-20}"
hidden="${BENCH_HIDDEN:-256}"
layers="${BENCH_LAYERS:-4}"
heads="${BENCH_HEADS:-8}"
kv_heads="${BENCH_KV_HEADS:-4}"
intermediate="${BENCH_INTERMEDIATE:-688}"
vocab="${BENCH_VOCAB:-4000}"             # tokenizer merges (the data allows ~2300)
model_vocab="${BENCH_MODEL_VOCAB:-32000}" # embedding/LM-head rows, as Llama 2 / TinyLlama / Mistral
batch="${BENCH_BATCH:-8}"
seq="${BENCH_SEQ:-256}"
targets="${BENCH_TARGETS:-q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj}"
device="${BENCH_DEVICE:-cpu}"
data="$root/examples/quickstart/support-chat.jsonl"

if [[ -n "${TAILOR_TRAINER_BIN:-}" ]]; then
  bin="$TAILOR_TRAINER_BIN"
else
  cargo build --release -q -p tailor-trainer --manifest-path "$root/Cargo.toml"
  bin="${CARGO_TARGET_DIR:-$root/target}/release/tailor-trainer"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 "$root/model/tests/reference.py" base-model "$work/base" "$data" "$vocab" "$hidden" "$layers" \
  "$heads" "$kv_heads" "$intermediate" "$model_vocab" >/dev/null 2>&1
"$bin" prepare --input "$data" --format chat --output "$work/prepared" --validation-fraction 0 >/dev/null 2>&1
python3 "$root/model/tests/reference.py" peft-init "$work/base" "$work/init" "$targets" 16 32 1 >/dev/null 2>&1

peak_rss() { grep "Maximum resident set size" "$1" | awk '{print $NF}'; }

/usr/bin/time -v -o "$work/tailor.time" "$bin" train --base-model "$work/base" \
  --train "$work/prepared/train.jsonl" --output "$work/tailor" --init-adapter "$work/init" \
  --target-modules "$targets" --rank 16 --alpha 32 --dropout 0 --batch-size "$batch" \
  --max-seq-length "$seq" --epochs 100 --max-steps "$steps" --learning-rate 1e-4 \
  --checkpoint-every 0 --threads "$threads" --device "$device" --dump-batches "$work/batches.json" \
  >"$work/tailor.json" 2>"$work/tailor.log"
REFERENCE_THREADS="$threads" /usr/bin/time -v -o "$work/peft.time" python3 "$root/model/tests/reference.py" \
  train "$work/base" "$work/init" "$work/batches.json" "$work/peft" >"$work/peft.json" 2>"$work/peft.log"

python3 - "$work" "$threads" "$(peak_rss "$work/tailor.time")" "$(peak_rss "$work/peft.time")" <<'PY'
import json, sys
work, threads, rss_t, rss_p = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = json.load(open(f"{work}/tailor.json"))
p = json.loads(open(f"{work}/peft.json").read().strip().splitlines()[-1])
cfg = json.load(open(f"{work}/base/config.json"))
print(f"model: Llama {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}; "
      f"{t['steps']} steps, {t['tokens']} tokens; threads {threads}")
tc = t["tokens"] / max(t["trainCpuSeconds"], 1e-9)
pc = p["tokens"] / max(p["trainCpuSeconds"], 1e-9)
print(f"tailor-trainer : {t['tokensPerSecond']:10.1f} tokens/s  {tc:10.1f} tokens/CPU-s   peak RSS {rss_t / 1024:8.1f} MiB   final loss {t['trainLoss']:.6f}")
print(f"PyTorch + PEFT : {p['tokensPerSecond']:10.1f} tokens/s  {pc:10.1f} tokens/CPU-s   peak RSS {rss_p / 1024:8.1f} MiB   final loss {p['losses'][-1]:.6f}")
print(f"ratio          : {t['tokensPerSecond'] / p['tokensPerSecond']:10.2f}x tokens/s  {tc / pc:10.2f}x tokens/CPU-s   {rss_t / rss_p:8.2f}x peak RSS")
PY
