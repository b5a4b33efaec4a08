#!/usr/bin/env bash
# Benchmark (a command, not a test): fetch a ~2 GB sharded checkpoint from a local S3 server
# (tailor-local-s3, i.e. s3s-fs) with tailor-fetch and with boto3's managed transfer
# (`download_file`, default TransferConfig: 8 MiB parts, 10 threads), in the same run, then
# fetch it again on the same "node" (same --cache) and count the bytes that cross the wire.
#
# Usage: scripts/bench-fetch.sh [SIZE_MIB]   (default 2048; split into 4 shards + small files)
# Needs: the libtorch venv (scripts/setup-libtorch.sh installs boto3), cargo, ~3x SIZE of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
size_mib="${1:-2048}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tailor/target}"

cargo build -q --release -p tailor-artifacts --bin tailor-fetch -p tailor-local-s3 --bin tailor-local-s3
bin="$CARGO_TARGET_DIR/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/bench-fetch.XXXXXX")"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID="AKIABENCHFETCH00001"
export AWS_SECRET_ACCESS_KEY="bench-fetch-secret"
export AWS_REGION="us-east-1"
export AWS_ALLOW_HTTP="true"
export RUST_LOG="${RUST_LOG:-warn}"

"$bin/tailor-local-s3" --root "$work/s3" --bucket bench >"$work/endpoint" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do [[ -s "$work/endpoint" ]] && break; sleep 0.1; done
export AWS_ENDPOINT_URL="$(head -1 "$work/endpoint")"
echo "bench-fetch: local S3 at $AWS_ENDPOINT_URL"

# A sharded checkpoint as transformers lays it out: 4 shards of SIZE/4 plus index, config, tokenizer.
src="$work/src"
mkdir -p "$src"
shard_mib=$((size_mib / 4))
for i in 1 2 3 4; do
  head -c "$((shard_mib * 1024 * 1024))" /dev/urandom >"$src/model-0000$i-of-00004.safetensors"
done
echo '{"metadata":{},"weight_map":{}}' >"$src/model.safetensors.index.json"
echo '{"model_type":"llama"}' >"$src/config.json"
head -c 2000000 /dev/urandom | base64 >"$src/tokenizer.json"
total_bytes=$(du -cb "$src"/* | tail -1 | cut -f1)
echo "bench-fetch: uploading $((total_bytes / 1024 / 1024)) MiB"
"$bin/tailor-fetch" --upload "$src" s3://bench/ckpt >/dev/null

now() { date +%s.%N; }
# Each timed fetch starts with no dirty pages of the one before (the upload's, boto3's): without
# this, the kernel's writeback of the previous 2 GB ran during the next client's fetch.
settle() { sync; }

# boto3: every object of the prefix with download_file (its default managed transfer).
settle
b0=$(now)
python3 - "$work/boto3" <<'PY'
import os, sys, boto3
dest = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="ckpt/")
for page in pages:
    for obj in page.get("Contents", []):
        rel = obj["Key"][len("ckpt/"):]
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file("bench", obj["Key"], path)
PY
b1=$(now)

# tailor-fetch, cold cache (verifies each file against the sha256 its upload recorded).
settle
f0=$(now)
"$bin/tailor-fetch" s3://bench/ckpt "$work/node/a" --cache "$work/node/cache" >"$work/first.json"
f1=$(now)
# The same checkpoint again on the same node: from the cache.
settle
c0=$(now)
"$bin/tailor-fetch" s3://bench/ckpt "$work/node/b" --cache "$work/node/cache" >"$work/second.json"
c1=$(now)

for d in boto3 node/a node/b; do
  diff -rq --exclude=.tailor-fetch "$src" "$work/$d" >/dev/null || { echo "bench-fetch: $d differs from the source"; exit 1; }
done

python3 - "$total_bytes" "$b0" "$b1" "$f0" "$f1" "$c0" "$c1" "$work/first.json" "$work/second.json" <<'PY'
import json, sys
total = int(sys.argv[1]); b0, b1, f0, f1, c0, c1 = map(float, sys.argv[2:8])
first, second = (json.load(open(p)) for p in sys.argv[8:10])
mb = total / 1e6
boto, tailor, cached = b1 - b0, f1 - f0, c1 - c0
print(f"checkpoint: {mb:.0f} MB in {len(first['files'])} files")
print(f"boto3 download_file:  {boto:7.2f} s  {mb / boto:8.1f} MB/s")
print(f"tailor-fetch (cold):  {tailor:7.2f} s  {mb / tailor:8.1f} MB/s  "
      f"({first['bytesTransferred'] / 1e6:.0f} MB transferred, sha256-verified: "
      f"{sum(1 for f in first['files'] if f.get('sha256'))}/{len(first['files'])} files)")
print(f"ratio tailor/boto3:   {boto / tailor:7.2f}x  (goal >= 1.2x)")
print(f"tailor-fetch (cache): {cached:7.2f} s  {second['bytesTransferred']} bytes transferred, "
      f"fromCache={second['fromCache']}  (goal: 0 bytes)")
PY
