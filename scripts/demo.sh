#!/usr/bin/env bash
# The local demo, end to end on a fresh machine: build, start tailor-sim (a local Kubernetes
# stand-in with simulated GPU nodes), install tailor with `kubectl apply -k`, pre-train a small
# base model on text the machine already has (cached), train the quickstart adapter (its loss per
# step as a sparkline and a PNG), serve it behind an OpenAI-compatible endpoint, ask it a question
# before and after fine-tuning (the official `openai` client), show the FineTuneJob's evaluation
# against its base on the test split, roll out a second adapter as a canary to promotion, then a faulty third one that
# rolls itself back, and print a short report.
#
#   scripts/demo.sh                 # TAILOR_DEMO_DIR=DIR keeps the simulator state and logs there
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tailor/target}"
work="${TAILOR_DEMO_DIR:-$(mktemp -d -t tailor-demo.XXXXXX)}"
mkdir -p "$work"
ns=tailor-demo
client="$root/tests/e2e/tests/serving_client.py"
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$(now) - $1:.1f}')"; }
demo_start=$(now)
step() { printf '\n\033[1m== %s\033[0m  [%s s]\n' "$*" "$(elapsed "$demo_start")"; }
report=()
pretrained=""

step "1. environment (libtorch virtualenv with torch, transformers, peft, openai; cargo build)"
eval "$(scripts/setup-libtorch.sh)"
cargo build -q -p tailor-sim -p tailor-operator -p tailor-trainer -p tailor-server -p tailor-router -p tailor-artifacts --bins
bin="$CARGO_TARGET_DIR/debug"

step "2. start tailor-sim (2 nodes x 4 simulated GPUs; containers run the binaries just built)"
export KUBECONFIG="$work/kubeconfig"
# OMP_WAIT_POLICY: the trainer and server images' ENV (the pods run the binaries, not the images).
OMP_WAIT_POLICY=PASSIVE "$bin/tailor-sim" up --state-dir "$work/sim" --kubeconfig "$KUBECONFIG" --nodes 2 --gpus-per-node 4 \
  --image "tailor-operator=$bin/tailor-operator" --image "tailor-trainer=$bin/tailor-trainer" \
  --image "tailor-server=$bin/tailor-server" --image "tailor-router=$bin/tailor-router" \
  --image "tailor-fetch=$bin/tailor-fetch" \
  >"$work/sim.log" 2>&1 &
sim=$!
load_pid=""
cleanup() {
  if [[ -n "$load_pid" ]]; then kill "$load_pid" 2>/dev/null || true; fi
  if kill -TERM "$sim" 2>/dev/null; then wait "$sim" 2>/dev/null || true; fi
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  [[ -f "$KUBECONFIG" ]] && kubectl get --raw /readyz >/dev/null 2>&1 && break
  kill -0 "$sim" 2>/dev/null || { cat "$work/sim.log"; exit 1; }
  sleep 0.3
done
kubectl get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.capacity.nvidia\.com/gpu'

step "3. install tailor: kubectl apply -k manifests/overlays/sim"
kubectl apply -k manifests/overlays/sim | sed 's/^/  /'
kubectl -n tailor-system rollout status deploy/tailor-operator --timeout=180s
report+=("installed with kubectl apply -k manifests/overlays/sim; the operator runs as its pod ($(kubectl -n tailor-system get pods -l app.kubernetes.io/name=tailor-operator -o jsonpath='{.items[0].metadata.name}'))")

# The simulator gives every claim its own directory; the operator verifies adapters on the claim
# it mounts in tailor-system, so the demo namespace's claim is bound to the same storage, as an
# admin binds one RWX share in several namespaces.
volume_dir() { # namespace claim
  local pv
  for _ in $(seq 1 200); do
    pv=$(kubectl -n "$1" get pvc "$2" -o jsonpath='{.spec.volumeName}' 2>/dev/null || true)
    [[ -n "$pv" ]] && break
    sleep 0.3
  done
  kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}'
}
shared=$(volume_dir tailor-system tailor-artifacts)
kubectl apply -f examples/quickstart/namespace.yaml -n "$ns" >/dev/null
kubectl apply -f examples/quickstart/artifacts-pvc.yaml -n "$ns" >/dev/null
demo_vol=$(volume_dir "$ns" tailor-artifacts)
if [[ ! -L "$demo_vol" ]]; then rmdir "$demo_vol" && ln -s "$shared" "$demo_vol"; fi

# A random model writes noise, and a LoRA on top of noise has nothing to adapt; so the base is a
# small Llama pre-trained here, on CPU, on English the machine already has (licences and manuals
# under /usr/share), with a tokenizer that also knows the quickstart data. A minute or two, once:
# the result is cached under ~/.cache/tailor, keyed by the script and the data.
step "4. a base model: a small Llama pre-trained here on licences and manuals from /usr/share (no network; cached)"
base_key=$(cat scripts/pretrain_base.py model/tests/reference.py examples/quickstart/support-chat.jsonl | sha256sum | cut -c1-16)
base_cache="${XDG_CACHE_HOME:-$HOME/.cache}/tailor/demo-base-$base_key"
if [[ ! -f "$shared/models/base/config.json" ]]; then
  if [[ -f "$base_cache/config.json" ]]; then
    echo "  pre-trained before: $base_cache"
  else
    grep -v '^\s*$' examples/quickstart/support-chat.jsonl >"$work/corpus.jsonl"
    rm -rf "$base_cache.tmp"
    python3 scripts/pretrain_base.py "$base_cache.tmp" "$work/corpus.jsonl" 2>"$work/pretrain.err" \
      | tee "$work/pretrain.log" | sed 's/^/  /' || { tail -n 20 "$work/pretrain.err"; exit 1; }
    tail -n 1 "$work/pretrain.log" >"$base_cache.tmp/pretrain.json"
    rm -rf "$base_cache" && mv "$base_cache.tmp" "$base_cache"
    pretrained=" (pre-trained by this run)"
  fi
  rm -rf "$shared/models/base" && mkdir -p "$shared/models"
  cp -r "$base_cache" "$shared/models/base"
fi
ls "$shared/models/base"
if [[ -f "$shared/models/base/pretrain.json" ]]; then
  report+=("base model: $(python3 scripts/demo_report.py pretrain "$shared/models/base/pretrain.json")${pretrained:- (pre-trained by an earlier run)}")
fi

step "5. the quickstart: Dataset -> FineTuneJob -> LoraAdapter -> ModelDeployment (kubectl apply -k examples/demo)"
kubectl apply -k examples/demo | sed 's/^/  /'
kubectl -n "$ns" wait --for=condition=Ready dataset/support-chat --timeout=300s
kubectl -n "$ns" get dataset support-chat
stats=$(kubectl -n "$ns" get dataset support-chat -o jsonpath='{.status.stats}')
report+=("dataset: $(python3 -c "import json;s=json.loads('''$stats''');print(f\"{s['examples']} examples ({s['train']} train / {s['validation']} validation / {s.get('test', 0)} test), {s['invalid']} invalid, {s['duplicatesRemoved']} duplicates removed, {s['redactions']} redactions\")")")
t0=$(now)
kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded finetunejob/support-v1 --timeout=900s
kubectl -n "$ns" get finetunejob support-v1
losses() { # base model's -> the adapter's, as the job's status has them
  kubectl -n "$ns" get finetunejob "$1" -o jsonpath='{.status.baseValidationLoss} {.status.validationLoss}' | awk '{printf "base %.3f -> %.3f", $1, $2}'
}
report+=("support-v1 trained in $(elapsed "$t0") s: validation loss $(losses support-v1)")
kubectl -n "$ns" wait --for=condition=Ready loraadapter/support-v1 --timeout=300s
# Where an adapter's files are: its URI's path, in the demo namespace's area of the store.
adapter_dir() { echo "$shared/$ns/$(kubectl -n "$ns" get loraadapter "$1" -o jsonpath='{.spec.uri}' | sed 's|^pvc://tailor-artifacts/||')"; }
v1_dir=$(adapter_dir support-v1)
# Loss per step: train loss from metrics.json (next to the adapter), validation loss from the
# trainer's log (every checkpointEverySteps) and the job's status (the base model's, the final).
kubectl -n "$ns" logs -l tailor.dev/finetunejob=support-v1 --tail=-1 --all-containers >"$work/support-v1-train.log" 2>&1 || true
echo "  loss per step (train: metrics.json history; validation: the trainer's log):"
python3 scripts/demo_report.py losses "$v1_dir/metrics.json" "$work/support-v1-train.log" "$work/support-v1-loss.png" support-v1 \
  | tee "$work/support-v1-loss.txt" | sed '$d'
report+=("support-v1 loss per step (plot: $work/support-v1-loss.png):")
while IFS= read -r line; do report+=("$line"); done < <(sed -n '1,2p' "$work/support-v1-loss.txt")
kubectl -n "$ns" wait --for=condition=Ready modeldeployment/support --timeout=300s
kubectl -n "$ns" get modeldeployment support
endpoint=$(kubectl -n "$ns" get modeldeployment support -o jsonpath='{.status.endpoint}')
echo "endpoint (status.endpoint): $endpoint"

# The question as the support app would send it: the assistant's system prompt (the one in the
# training data), then the customer's message.
system_prompt=$(head -n 1 examples/quickstart/support-chat.jsonl | python3 -c 'import json, sys; print(json.load(sys.stdin)["messages"][0]["content"])')
question="How do I reset my password?"
ask() { # model...
  python3 "$client" ask "$endpoint" "$question" "$@" --system "$system_prompt" --max-tokens 48 | python3 -c '
import json, sys
for model, a in json.load(sys.stdin).items():
    print("  [%s -> answered by %s] %r" % (model, a["model"], a["content"]))'
}
step "6. one question, before and after fine-tuning (openai client: model 'base', then model 'support')"
echo "  system: $system_prompt"
echo "  user:   $question"
ask base support | tee "$work/answers.txt"
report+=("the endpoint answered \"$question\" through the openai client (greedy, 48 tokens at most):")
while IFS= read -r line; do report+=("$line"); done <"$work/answers.txt"

# The FineTuneJob's evaluate step (spec.evaluation in examples/demo) ran after training, as its own
# Job: test loss, exact match and F1 of base and adapter on the Dataset's test split, and a win
# rate from the judge, the 'base' model of this very deployment (a stand-in, constrained to a
# verdict: structuredOutputs). Its results are in the job's status and next to the adapter.
step "7. support-v1's evaluation: its own step of the FineTuneJob (spec.evaluation; the 'base' model of the deployment judges)"
kubectl -n "$ns" get finetunejob support-v1 -o wide
kubectl -n "$ns" get finetunejob support-v1 -o jsonpath='{.status.evaluation}' >"$work/eval.json"
python3 scripts/demo_report.py evaluation "$work/eval.json" | tee "$work/eval.txt"
report+=("support-v1 evaluated by its FineTuneJob's evaluate step (status.evaluation; judged samples in $v1_dir/evaluation):")
while IFS= read -r line; do report+=("$line"); done <"$work/eval.txt"

# Two more adapters, trained side by side: v2 a good one (support-v1's settings, another seed),
# v3 the one the demo makes faulty, which only has to exist to be rolled back: a short run.
step "8. train support-v2 and support-v3"
for v in v2:7 v3:9:5; do # name:seed[:epochs]
  kubectl kustomize examples/demo | python3 -c '
import re, sys
name, seed, *epochs = sys.argv[1].split(":")
docs = sys.stdin.read().split("\n---\n")
job = next(d for d in docs if "kind: FineTuneJob" in d)
job = job.replace("support-v1", "support-" + name).replace("seed: 42", "seed: " + seed)
job = re.sub(r"\n  evaluation:\n(    .*\n)*", "\n", job + "\n")  # only support-v1 is evaluated
print(re.sub(r"epochs: \d+", "epochs: " + epochs[0], job) if epochs else job)' "$v" \
    | kubectl apply -f - | sed 's/^/  /'
done
t0=$(now)
for v in v2 v3; do
  kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded "finetunejob/support-$v" --timeout=900s
  kubectl -n "$ns" wait --for=condition=Ready "loraadapter/support-$v" --timeout=300s
  report+=("support-$v trained: validation loss $(losses "support-$v")")
done
kubectl -n "$ns" get finetunejobs,loraadapters

# Steady traffic from 40 users while a canary runs; every request is a line in $1.
start_load() {
  rm -f "$work/stop"
  python3 "$client" load "$endpoint" support "$work/stop" "$1" 4 40 >/dev/null &
  load_pid=$!
}
stop_load() {
  touch "$work/stop"
  wait "$load_pid" || true
  load_pid=""
  python3 - "$1" <<'EOF'
import collections, json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
by = collections.Counter((r["target"] or "none", "ok" if r["ok"] else "error") for r in rs)
print(f"  {len(rs)} requests: " + ", ".join(f"{t} {k}: {n}" for (t, k), n in sorted(by.items())))
EOF
}
load_summary() {
  python3 - "$1" <<'EOF'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
print(len(rs), "requests,", sum(1 for r in rs if not r["ok"]), "errors")
EOF
}
# Prints the status whenever step or weight change, until the canary has ended (promoted: the
# stable revision changed; or rolled back).
watch_rollout() { # the stable revision before the canary
  local last="" line phase stable_now canary
  while true; do
    IFS='|' read -r phase stable_now canary line < <(kubectl -n "$ns" get modeldeployment support \
      -o jsonpath='{.status.phase}|{.status.stableRevision}|{.status.canaryRevision}|{.status.phase} step={.status.currentStep} weight={.status.canaryWeight} canary={.status.canaryRevision} stable={.status.stableRevision}{"\n"}')
    if [[ "$line" != "$last" ]]; then
      printf '  %s  %s\n' "$(date +%T)" "$line"
      timeline+=("$(date +%T) $line")
      last="$line"
    fi
    [[ -z "$canary" && ( "$phase" == RolledBack || ( "$phase" == Healthy && "$stable_now" != "$1" ) ) ]] && break
    sleep 0.5
  done
}
weights() { printf '%s\n' "${timeline[@]}" | sed -n 's/.*weight=\([0-9]*\).*/\1%/p' | uniq | paste -sd' ' | sed 's/ / -> /g'; }

step "9. adapter canary: support -> support-v2 (no new pods; 25% of users, then 50%, then promoted)"
stable=$(kubectl -n "$ns" get modeldeployment support -o jsonpath='{.status.stableRevision}')
pods_before=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=tailor-server -o jsonpath='{.items[*].metadata.uid}')
start_load "$work/load-v2.jsonl"
kubectl -n "$ns" patch modeldeployment support --type=json \
  -p '[{"op":"replace","path":"/spec/adapters/0/adapterRef/name","value":"support-v2"}]' | sed 's/^/  /'
timeline=()
watch_rollout "$stable"
stop_load "$work/load-v2.jsonl"
pods_after=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=tailor-server -o jsonpath='{.items[*].metadata.uid}')
[[ "$pods_before" == "$pods_after" ]] && same="the same serving pods" || same="NEW serving pods (unexpected)"
report+=("canary support-v2: $(kubectl -n "$ns" get modeldeployment support -o jsonpath='{.status.history[-1:].outcome}') — weights $(weights) on $same; load: $(load_summary "$work/load-v2.jsonl")")
ask support

step "10. a faulty canary: support -> support-v3, which fails 30% of requests (test-only fault injection)"
# TEST-ONLY: tailor-server's faultInjection, off by default; here it breaks support-v3 on purpose.
kubectl -n "$ns" annotate modeldeployment support --overwrite \
  'tailor.dev/test-fault-injection={"errorRate":0.3,"adapters":["support-v3"]}' | sed 's/^/  /'
stable=$(kubectl -n "$ns" get modeldeployment support -o jsonpath='{.status.stableRevision}')
start_load "$work/load-v3.jsonl"
kubectl -n "$ns" patch modeldeployment support --type=json \
  -p '[{"op":"replace","path":"/spec/adapters/0/adapterRef/name","value":"support-v3"}]' | sed 's/^/  /'
timeline=()
watch_rollout "$stable"
stop_load "$work/load-v3.jsonl"
kubectl -n "$ns" get events --field-selector type=Warning -o custom-columns='TIME:.lastTimestamp,REASON:.reason,MESSAGE:.message' | sed 's/^/  /'
evidence=$(kubectl -n "$ns" get modeldeployment support -o jsonpath='{.status.history[-1:].outcome}: {.status.history[-1:].reason}')
rollback=$(python3 - "$work/load-v3.jsonl" "$(kubectl -n "$ns" get modeldeployment support -o jsonpath='{.status.history[-1:].time}')" <<'EOF'
import datetime, json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
canary = [r for r in rs if (r["target"] or "").startswith("canary-")]
stable_errors = sum(1 for r in rs if not r["ok"] and not (r["target"] or "").startswith("canary-"))
t = datetime.datetime.fromisoformat(sys.argv[2].replace("Z", "+00:00")).timestamp()
first = min((r["t"] for r in canary), default=t)
print(f"rolled back {t - first:.0f} s after the canary's first request (budget (failureLimit+1) x interval = 9 s); "
      f"canary users: {len(canary)} requests, {sum(1 for r in canary if not r['ok'])} errors; stable users: {stable_errors} errors")
EOF
)
report+=("canary support-v3: weights $(weights); $evidence")
report+=("$rollback")
kubectl -n "$ns" get modeldeployment support

step "report"
report+=("the demo took $(elapsed "$demo_start") s")
for line in "${report[@]}"; do
  if [[ "$line" == "  "* ]]; then printf '  %s\n' "$line"; else printf ' - %s\n' "$line"; fi
done
echo
echo "state and logs: $work (sim.log; kubectl --kubeconfig $KUBECONFIG ... while it runs)"
