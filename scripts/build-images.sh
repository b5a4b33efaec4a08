#!/usr/bin/env bash
# Builds and tags tailor's five images with docker or podman:
#
#   tailor-operator  operator/Dockerfile       the operator (distroless)
#   tailor-router    router/Dockerfile         the OpenAI-aware router (distroless)
#   tailor-fetch     artifacts/Dockerfile      the init container that fetches remote inputs (distroless)
#   tailor-trainer   trainer-image/Dockerfile  prepare and train, libtorch + CUDA 13 (distroless)
#   tailor-server    server-image/Dockerfile   OpenAI-compatible serving, libtorch + CUDA 13 (distroless)
#
# Usage: scripts/build-images.sh [OPTIONS] [IMAGE...]      (run from anywhere)
#   IMAGE                any of operator router fetch trainer server (default: all five)
#   --registry REG       name prefix (default ghcr.io/tailor-dev, what manifests/base pulls);
#                        '' for bare names (tailor-router:TAG, what the kind overlay expects)
#   --tag TAG            (default: the workspace version, from `cargo metadata`)
#   --from-binaries DIR  assemble the images from binaries already built in DIR (e.g.
#                        target/release) instead of compiling in the Dockerfiles' build stage:
#                        each Dockerfile's final stage, with DIR's binary (debug info stripped
#                        from the copy) in place of the build stage's and, for trainer and
#                        server, the libtorch libraries the binary loads
#                        (scripts/libtorch-libs.sh; the libtorch of LD_LIBRARY_PATH)
#   --cuda               with --from-binaries: also libtorch_cuda and the CUDA libraries (GPU
#                        nodes); without it the libtorch images run on CPU only
#   --base IMAGE         with --from-binaries: this base instead of the Dockerfiles' (e.g. one
#                        imported locally where no registry is reachable)
#   --engine CMD         the container engine command (default: $TAILOR_IMAGE_ENGINE, else
#                        docker when its daemon answers, else podman); may carry global flags,
#                        e.g. "podman --runtime runc"
#
# Prints the built references, one per line, on stdout; the engine's output goes to stderr.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
die() { echo "build-images: $*" >&2; exit 1; }

registry="ghcr.io/tailor-dev" tag="" bins="" cuda=false base="" engine_cmd="${TAILOR_IMAGE_ENGINE:-}"
images=()
while (($#)); do
  case "$1" in
    --registry) [[ $# -ge 2 ]] || usage; registry="$2"; shift 2 ;;
    --tag) [[ $# -ge 2 && -n "$2" ]] || usage; tag="$2"; shift 2 ;;
    --from-binaries) [[ $# -ge 2 && -n "$2" ]] || usage; bins="$2"; shift 2 ;;
    --cuda) cuda=true; shift ;;
    --base) [[ $# -ge 2 && -n "$2" ]] || usage; base="$2"; shift 2 ;;
    --engine) [[ $# -ge 2 && -n "$2" ]] || usage; engine_cmd="$2"; shift 2 ;;
    -h | --help) usage ;;
    operator | router | fetch | trainer | server) images+=("$1"); shift ;;
    *) echo "build-images: unknown argument '$1'" >&2; usage ;;
  esac
done
((${#images[@]})) || images=(operator router fetch trainer server)
if [[ -n "$bins" ]]; then
  [[ -d "$bins" ]] || die "--from-binaries $bins: not a directory"
  bins="$(cd "$bins" && pwd)"
fi
cd "$(dirname "$0")/.."
if [[ -z "$bins" ]] && { $cuda || [[ -n "$base" ]]; }; then
  die "--cuda and --base go with --from-binaries"
fi

if [[ -z "$engine_cmd" ]]; then
  if command -v docker >/dev/null && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    engine_cmd=docker
  elif command -v podman >/dev/null; then
    engine_cmd=podman
  else
    die "neither a docker daemon nor podman found (or set TAILOR_IMAGE_ENGINE / --engine)"
  fi
fi
read -ra engine <<<"$engine_cmd"

if [[ -z "$tag" ]]; then
  tag="$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "tailor-operator"))')"
fi

dockerfile_of() {
  case "$1" in
    operator) echo operator/Dockerfile ;;
    router) echo router/Dockerfile ;;
    fetch) echo artifacts/Dockerfile ;;
    trainer) echo trainer-image/Dockerfile ;;
    server) echo server-image/Dockerfile ;;
  esac
}
ref_of() { echo "${registry:+$registry/}tailor-$1:$tag"; }

# The Dockerfile's final stage, reading the build stage's /out/ from the context's out/ and, with
# --base, on that base. Only COPY, ENV, USER and the like can be replayed this way: a RUN in the
# final stage is an error rather than a silently different image.
runtime_stage() { # DOCKERFILE
  local stage
  stage="$(awk '/^FROM /{buf=""} {buf = buf $0 "\n"} END{printf "%s", buf}' "$1")"
  if grep -q '^RUN ' <<<"$stage"; then die "$1: the final stage runs commands; --from-binaries cannot replay it"; fi
  stage="${stage//--from=build \/out\//out/}"
  if grep -q -- '--from=' <<<"$stage"; then die "$1: the final stage copies from a stage other than build's /out/"; fi
  if [[ -n "$base" ]]; then stage="$(sed -E "1s|^FROM [^ ]+|FROM $base|" <<<"$stage")"; fi
  printf '%s\n' "$stage"
}

work=""
trap '[[ -z "$work" ]] || rm -rf "$work"' EXIT
if [[ -n "$bins" ]]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/build-images.XXXXXX")"
fi

for image in "${images[@]}"; do
  dockerfile="$(dockerfile_of "$image")"
  ref="$(ref_of "$image")"
  echo "build-images: $ref ($dockerfile${bins:+, binaries from $bins})" >&2
  if [[ -z "$bins" ]]; then
    "${engine[@]}" build -f "$dockerfile" -t "$ref" . >&2
  else
    ctx="$work/$image"
    binary="$bins/tailor-$image"
    [[ -x "$binary" ]] || die "$binary: no such executable (build it first: cargo build --bins)"
    mkdir -p "$ctx/out/bin"
    if command -v strip >/dev/null; then
      strip --strip-debug -o "$ctx/out/bin/tailor-$image" "$binary"
    else
      cp "$binary" "$ctx/out/bin/"
    fi
    if grep -q -- '--from=build /out/lib/' "$dockerfile"; then
      lib_args=("$binary" "$ctx/out/lib")
      if $cuda; then lib_args+=(--cuda); fi
      scripts/libtorch-libs.sh "${lib_args[@]}"
    fi
    runtime_stage "$dockerfile" >"$ctx/Dockerfile"
    "${engine[@]}" build -f "$ctx/Dockerfile" -t "$ref" "$ctx" >&2
    rm -rf "$ctx"
  fi
  echo "$ref"
done
