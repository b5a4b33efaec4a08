#!/usr/bin/env bash
# Benchmark (not a test): tailor-server against Hugging Face transformers `generate` (+ PEFT) on
# the same small random Llama checkpoint (hidden 256, 4 layers, 8 heads / 4 KV heads) with 8
# LoRA adapters (r=8, all projections), in one run. Prints output tokens/s:
#   - 1 request at a time, and 16 concurrent requests (base model);
#   - 16 concurrent requests over 8 distinct adapters vs all on one adapter.
# The transformers baseline serves requests one at a time (what a server built on `generate`
# does with concurrent requests); with PEFT it switches adapters per request (set_adapter).
#
# Env: BENCH_PROFILE (cargo profile, default release), BENCH_DEVICE (cpu|cuda, default cpu),
#      BENCH_THREADS (torch intra-op threads for both sides, default 2),
#      BENCH_MAX_TOKENS (default 64), BENCH_KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
profile="${BENCH_PROFILE:-release}"
device="${BENCH_DEVICE:-cpu}"
threads="${BENCH_THREADS:-2}"
max_tokens="${BENCH_MAX_TOKENS:-64}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --profile "$profile" -p tailor-server >&2
dir_name="$profile"; [[ "$profile" == dev ]] && dir_name=debug
bin="$CARGO_TARGET_DIR/$dir_name/tailor-server"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [[ "${BENCH_KEEP:-}" == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
ref=server-image/tests/server_reference.py
client=server-image/bench/bench_client.py
python3 "$ref" bench-fixtures "$work" >&2

adapters=()
for i in 0 1 2 3 4 5 6 7; do adapters+=(--adapter "a$i=$work/a$i"); done
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
RUST_LOG=warn "$bin" --model "$work/base" --served-model-name base --listen "127.0.0.1:$port" \
  --device "$device" --threads "$threads" --max-batch-size 32 --max-loaded-adapters 8 "${adapters[@]}" &
server_pid=$!
for _ in $(seq 1 600); do
  curl -sf "$url/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "$url/ready" >/dev/null

tps() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.1f" % (d["tokens"] / d["seconds"]))' "$1"; }
ratio() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }

all_adapters="a0,a1,a2,a3,a4,a5,a6,a7"
adapter_dirs="$(for i in 0 1 2 3 4 5 6 7; do printf '%s,' "$work/a$i"; done)"

t1=$(tps "$(python3 "$client" "$url" base 1 8 "$max_tokens")")
t16=$(tps "$(python3 "$client" "$url" base 16 4 "$max_tokens")")
t16one=$(tps "$(python3 "$client" "$url" a0 16 4 "$max_tokens")")
t16eight=$(tps "$(python3 "$client" "$url" "$all_adapters" 16 4 "$max_tokens")")

export REFERENCE_THREADS="$threads"
h1=$(tps "$(python3 "$ref" bench "$work/base" - 8 "$max_tokens")")
h16=$(tps "$(python3 "$ref" bench "$work/base" - 16 "$max_tokens")")
h16eight=$(tps "$(python3 "$ref" bench "$work/base" "$adapter_dirs" 16 "$max_tokens")")

echo "device=$device threads=$threads max_tokens=$max_tokens (output tokens/s)"
printf '%-44s %10s %10s %8s\n' "" tailor transformers ratio
printf '%-44s %10s %10s %8s\n' "1 request at a time (base)" "$t1" "$h1" "$(ratio "$t1" "$h1")x"
printf '%-44s %10s %10s %8s\n' "16 concurrent (base)" "$t16" "$h16" "$(ratio "$t16" "$h16")x"
printf '%-44s %10s %10s %8s\n' "16 concurrent, 8 distinct adapters" "$t16eight" "$h16eight" "$(ratio "$t16eight" "$h16eight")x"
printf '%-44s %10s\n' "16 concurrent, one adapter" "$t16one"
printf '%-44s %10s\n' "8-adapter / single-adapter throughput" "$(ratio "$t16eight" "$t16one")x"
