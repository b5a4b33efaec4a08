#!/usr/bin/env bash
# A local kind cluster running tailor, for users with Docker:
#
#   1. a kind cluster (an existing one of the same name is reused);
#   2. GPU capacity advertised on its nodes: `nvidia.com/gpu` patched into each node's status
#      through the API, as fake-GPU setups do, so pods that ask for GPUs are scheduled (they run
#      on CPU: tailor's trainer and server fall back to it when no CUDA device is there);
#   3. the five images built with scripts/build-images.sh as tailor-*:dev (the names the kind
#      overlay configures) and `kind load`ed into the cluster;
#   4. tailor installed with `kubectl apply -k manifests/overlays/kind`, waiting for the operator.
#
# Usage: scripts/kind-up.sh [--from-binaries DIR]
#   --from-binaries DIR  assemble the images from binaries built on this machine (e.g.
#                        target/release after `cargo build --release --bins`) instead of
#                        compiling them in Docker; the libtorch images are then CPU-only, which
#                        is all a kind node runs. DIR's binaries must run on Debian 12 (glibc 2.36).
# Environment: TAILOR_KIND_CLUSTER (default tailor), TAILOR_KIND_GPUS (per node, default 4),
#   TAILOR_KIND_NODE_IMAGE (kind's --image; default: kind's own).
# Needs: docker (with its daemon running), kind, kubectl. Running it again rebuilds and reloads the
# images, re-advertises the GPUs (a restarted kubelet drops them) and re-applies the manifests.
#
# Not run by the test suite (no Docker engine there); `shellcheck scripts/kind-up.sh` is clean.
set -euo pipefail

log() { echo "kind-up: $*" >&2; }
die() { log "$*"; exit 1; }

from=()
case "${1:-}" in
  "") ;;
  --from-binaries)
    [[ $# -eq 2 ]] || die "usage: $0 [--from-binaries DIR]"
    [[ -d "$2" ]] || die "--from-binaries $2: not a directory"
    from=(--from-binaries "$(cd "$2" && pwd)")
    ;;
  *) die "usage: $0 [--from-binaries DIR]" ;;
esac
cd "$(dirname "$0")/.."

cluster="${TAILOR_KIND_CLUSTER:-tailor}"
gpus="${TAILOR_KIND_GPUS:-4}"
[[ "$gpus" =~ ^[0-9]+$ ]] || die "TAILOR_KIND_GPUS=$gpus: expected a whole number"

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (docker info)"

# 1. The cluster.
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "reusing the kind cluster $cluster"
else
  create=(kind create cluster --name "$cluster" --wait 180s)
  if [[ -n "${TAILOR_KIND_NODE_IMAGE:-}" ]]; then create+=(--image "$TAILOR_KIND_NODE_IMAGE"); fi
  "${create[@]}"
fi
kube=(kubectl --context "kind-$cluster")

# 2. Simulated GPUs: capacity in node status (the kubelet derives allocatable from it).
for node in $("${kube[@]}" get nodes -o name); do
  "${kube[@]}" patch "$node" --subresource=status --type=json \
    -p "[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$gpus\"}]" >/dev/null
  for _ in $(seq 60); do
    [[ "$("${kube[@]}" get "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "$gpus" ]] && break
    sleep 1
  done
  [[ "$("${kube[@]}" get "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "$gpus" ]] ||
    die "$node does not show $gpus allocatable nvidia.com/gpu after a minute"
  log "$node: $gpus nvidia.com/gpu"
done

# 3. The images, under the names manifests/overlays/kind gives the operator.
refs="$(TAILOR_IMAGE_ENGINE=docker scripts/build-images.sh --registry '' --tag dev "${from[@]}")"
for ref in $refs; do
  log "loading $ref"
  kind load docker-image --name "$cluster" "$ref"
done

# 4. tailor.
"${kube[@]}" apply -k manifests/overlays/kind
# A new image under the same tag: restart so the operator runs it.
"${kube[@]}" -n tailor-system rollout restart deployment/tailor-operator
"${kube[@]}" -n tailor-system rollout status deployment/tailor-operator --timeout=180s

cat >&2 <<EOF
kind-up: tailor runs in the kind cluster "$cluster" (kubectl context kind-$cluster), with $gpus
simulated GPUs per node. Next:
  kubectl --context kind-$cluster get crds | grep tailor.dev
  kubectl --context kind-$cluster -n tailor-system logs deployment/tailor-operator
Base models: a pvc:// URI under models/ in the tailor-system artifact claim, or hf://org/name
(fetched by tailor-fetch; the cluster has network). The tenant namespaces' tailor-artifacts
claims must share one storage with tailor-system's (RWX); kind's local-path claims do not, see
tests/e2e/README.md. Delete everything with: kind delete cluster --name $cluster
EOF
