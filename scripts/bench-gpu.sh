#!/usr/bin/env bash
# GPU benchmark (not a test): tailor-trainer and tailor-server on CUDA in bf16, on a random
# TinyLlama-shaped model (1.1B parameters), each next to its peer in the same run where the peer
# is installed (PyTorch + PEFT for training, transformers generate for decoding).
#
#   TAILOR_TRAINER_BIN=... TAILOR_SERVER_BIN=... TOKENIZER_DIR=... scripts/bench-gpu.sh [OUT_DIR]
#   BENCH_BATCH=8 BENCH_SEQ=2048 ... scripts/bench-gpu.sh     # the GPU-bound size (8 x 2,048 tokens)
#
# Binaries default to a release build of this checkout. TOKENIZER_DIR holds tokenizer.json,
# tokenizer_config.json and config.json of a small model from `model/tests/reference.py
# base-model` (only its tokenizer and eos id are used). Prints tokens/s, the fraction of the
# card's peak dense bf16 FLOP/s (training, 4 * params * tokens/s as for LoRA, counting non-padding
# tokens only) and decode tokens/s at batch 1 against the memory-bandwidth bound
# (bandwidth / bytes of weights).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
hidden="${BENCH_HIDDEN:-2048}" layers="${BENCH_LAYERS:-22}" heads="${BENCH_HEADS:-32}"
kv_heads="${BENCH_KV_HEADS:-4}" inter="${BENCH_INTERMEDIATE:-5632}" vocab="${BENCH_VOCAB:-32000}"
steps="${BENCH_STEPS:-30}" batch="${BENCH_BATCH:-8}" seq="${BENCH_SEQ:-512}" new_tokens="${BENCH_NEW_TOKENS:-256}"
device="${BENCH_DEVICE:-cuda}"  # cpu only to try the script itself
dtype="$([[ $device == cuda ]] && echo bf16 || echo f32)"
targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
trainer="${TAILOR_TRAINER_BIN:-$root/target/release/tailor-trainer}"
server="${TAILOR_SERVER_BIN:-$root/target/release/tailor-server}"
py="$root/scripts/gpu_bench.py"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

echo "== environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU ($device)"; } | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
python3 -c 'import transformers, peft; print("transformers", transformers.__version__, "peft", peft.__version__)' 2>/dev/null \
  && peers=1 || { echo "transformers/peft not installed: tailor's figures only"; peers=0; }
torch_lib="$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
gpu="$(head -1 "$out/gpu.txt")"
# Dense bf16 peak FLOP/s and HBM bandwidth (bytes/s) from the vendor's data sheets.
case "$gpu" in
  *H200*) peak=989e12 bw=4.8e12 ;;
  *"H100 NVL"*) peak=835e12 bw=3.9e12 ;;
  *"H100 PCIe"*) peak=756e12 bw=2.0e12 ;;
  *H100*) peak=989e12 bw=3.35e12 ;;
  *A100*) peak=312e12 bw=2.0e12 ;;
  *) peak=0 bw=0 ;;
esac

echo "== model (hidden $hidden, $layers layers, vocab $vocab)"
python3 "$py" make-model "$work/base" "${TOKENIZER_DIR:?}" "$hidden" "$layers" "$heads" "$kv_heads" "$inter" "$vocab" | tee "$out/model.json"
params="$(python3 -c "import json; print(json.load(open('$out/model.json'))['parameters'])")"
"$trainer" prepare --input "$root/examples/quickstart/support-chat.jsonl" --format chat --output "$work/prepared" \
  --validation-fraction 0 >/dev/null

echo "== training: tailor-trainer, cuda bf16, batch $batch, seq $seq, $steps steps"
# TAILOR_PROFILE=1: per-phase ms per step (the device synchronised at each phase's end), host
# syncs per step, steady-state tokens/s and MFU against the card's peak, in profile.json.
TAILOR_PROFILE=1 TAILOR_PEAK_TFLOPS="$(python3 -c "print($peak / 1e12)")" \
"$trainer" train --base-model "$work/base" --train "$work/prepared/train.jsonl" --output "$work/tailor" \
  --target-modules "$targets" --rank 16 --alpha 32 --dropout 0 --batch-size "$batch" --max-seq-length "$seq" \
  --epochs 100 --max-steps "$steps" --learning-rate 1e-4 --checkpoint-every 0 --device "$device" \
  --dump-batches "$work/batches.json" >"$out/tailor-train.json" 2>"$out/tailor-train.log"
echo "rc=$?"; tail -5 "$out/tailor-train.log"; cp "$work/tailor/profile.json" "$out/tailor-profile.json" 2>/dev/null \
  && cat "$out/tailor-profile.json"
if ((peers)); then
  echo "== training: PyTorch + PEFT on the same batches"
  python3 "$py" peft-train "$work/base" "$work/batches.json" 16 32 "$targets" >"$out/peft-train.json" 2>"$out/peft-train.log"
  echo "rc=$?"; cat "$out/peft-train.json"; tail -3 "$out/peft-train.log"
fi

echo "== decode: tailor-server, cuda bf16, batch 1, $new_tokens tokens"
"$server" --model "$work/base" --served-model-name bench --listen 127.0.0.1:18080 --device "$device" --dtype "$dtype" \
  --max-seq-length 2048 >"$out/server.log" 2>&1 &
for _ in $(seq 1 300); do curl -sf 127.0.0.1:18080/ready >/dev/null && break; sleep 1; done
python3 "$py" stream-decode http://127.0.0.1:18080 bench "$new_tokens" | tee "$out/tailor-decode.json"
kill %1 2>/dev/null
if ((peers)); then
  echo "== decode: transformers generate"
  python3 "$py" hf-decode "$work/base" "$new_tokens" 2>"$out/hf-decode.log" | tee "$out/hf-decode.json"
fi

echo "== summary"
python3 - "$out" "$params" "$peak" "$bw" "$gpu" <<'PY'
import json, os, sys
out, params, peak, bw, gpu = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            text = f.read().strip()
        try:
            return json.loads(text)
        except ValueError:
            return json.loads(text.splitlines()[-1])
    except Exception:
        return None
print(f"card: {gpu}; model: {params/1e9:.2f}B parameters, bf16")
t, p = load("tailor-train.json"), load("peft-train.json")
if t:
    tps = t.get("tokensPerSecond") or t.get("metrics", {}).get("tokensPerSecond")
    line = f"train: tailor {tps:,.0f} tokens/s"
    if peak:
        line += f", {4*params*tps/peak:.1%} of peak bf16 FLOP/s"
    if p:
        line += f"; PEFT {p['tokensPerSecond']:,.0f} tokens/s; ratio {tps/p['tokensPerSecond']:.2f}x"
    print(line)
    print("first losses: tailor", [round(r.get("loss", float("nan")), 4) for r in t.get("history", [])[:5]],
          "PEFT", [round(x, 4) for x in (p or {}).get("firstLosses", [])])
d, h = load("tailor-decode.json"), load("hf-decode.json")
if d:
    line = f"decode batch 1: tailor {d['tokensPerSecond']:,.0f} tokens/s"
    if bw:
        bound = bw / (2 * params)
        line += f" (bound {bound:,.0f} tokens/s at {bw/1e12:.2f} TB/s: {d['tokensPerSecond']/bound:.0%})"
    if h:
        line += f"; transformers {h['tokensPerSecond']:,.0f} tokens/s; ratio {d['tokensPerSecond']/h['tokensPerSecond']:.2f}x"
    print(line)
PY
