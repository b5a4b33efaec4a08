#!/usr/bin/env bash
# The five images build and start here, without a registry (scripts/test.sh runs this after the
# cargo tests, so CI does too):
#
# - a Debian bookworm base made by `debootstrap --variant=minbase` and `podman import` (its root
#   filesystem is cached as a tarball in ~/.cache/tailor/images, so only a cold run bootstraps);
# - the images assembled by `scripts/build-images.sh --from-binaries` from the binaries the
#   workspace build just made: each Dockerfile's final stage on that base (for the libtorch
#   images only the libraries `ldd` says the binary needs: CPU);
# - each run with podman and runc the way the operator's pods run: UID/GID 65532, a read-only
#   root with a tmpfs at /tmp (the pods' /tmp emptyDir), no capabilities, no new privileges,
#   `--network none`, explicit ulimits. HTTP checks run inside the container's own network
#   namespace (`podman exec` with bash's /dev/tcp; the production images have no shell, the test
#   base has one).
#
# Checks: every image answers `--version` with the workspace version it is tagged with;
# tailor-trainer prepares a dataset into /tmp (same stats as the host binary); tailor-fetch
# fetches a read-only mounted directory into /tmp, sha256-checked; tailor-server serves a tiny
# model mounted read-only (/health, /ready, a completion); tailor-router starts with its image's
# default command on a mounted config (/healthz, /readyz, /v1/models, and an OpenAI-shaped 502
# for its unreachable backend). Any failure exits non-zero; nothing is skipped. The images (and
# the imported base) are removed at the end; the cached tarball stays.
#
# Usage: scripts/test-images.sh [BIN_DIR]   (default: $CARGO_TARGET_DIR/debug, else target/debug)
#        scripts/test-images.sh --base-only   (only step 1's cached tarball: scripts/test.sh
#                                              makes it while the workspace compiles)
# Needs (scripts/test.sh installs them): podman, runc, debootstrap; root (debootstrap, and
# podman's UID 65532 inside the container).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

log() { echo "test-images: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

base_only=false
[[ "${1:-}" == --base-only ]] && base_only=true
bins="${1:-${CARGO_TARGET_DIR:-target}/debug}"
cache="${TAILOR_CACHE:-$HOME/.cache/tailor}/images"
base_tar="$cache/debian-bookworm-minbase.tar"
registry="localhost/tailor-test"
base_ref="$registry/base:bookworm"
mirror="${TAILOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
podman=(podman --runtime runc)
# As the operator's pods (operator/src/pods.rs): non-root 65532, read-only root, /tmp writable.
# The ulimits are explicit because podman's default (nofile 1048576) is above the hard limit
# here and runc refuses it.
run=("${podman[@]}" run --user 65532:65532 --read-only --read-only-tmpfs=false
  --tmpfs "/tmp:rw,mode=1777,size=256m" --env HOME=/tmp --cap-drop ALL
  --security-opt no-new-privileges --network none
  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

# The base image: a minimal Debian root filesystem (glibc, libstdc++, libgcc_s and bash, as
# distroless cc has them, plus the shell the checks need).
# One bootstrap at a time (the --base-only run in the background and this one may overlap):
# whoever takes the lock second finds the tarball made.
make_base_tar() {
  mkdir -p "$cache"
  exec 8>"$cache/.lock"
  flock 8
  if [[ ! -f "$base_tar" ]]; then
    log "bootstrapping Debian bookworm (minbase) from $mirror (cold cache only)"
    local root="$cache/rootfs.tmp"
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
      tail -20 "$cache/debootstrap.log" >&2
      fail "debootstrap failed"
    }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/{doc,man,info,locale}
    tar --numeric-owner -C "$root" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$root"
  fi
  exec 8>&-
}

for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/test.sh installs it)"
done
[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap; podman running containers as UID 65532)"
if $base_only; then
  make_base_tar
  log "base tarball ready: $base_tar"
  exit 0
fi
[[ -x "$bins/tailor-server" ]] || fail "$bins has no tailor-server (build first: cargo build --bins)"
eval "$(scripts/setup-libtorch.sh)"

work="$(mktemp -d "${TMPDIR:-/tmp}/test-images.XXXXXX")"
containers=()
refs=()
cleanup() {
  local rc=$?
  for c in "${containers[@]}"; do
    if ((rc != 0)); then
      log "logs of $c:"
      "${podman[@]}" logs "$c" 2>&1 | tail -20 >&2 || true
    fi
    "${podman[@]}" rm -f -t 0 "$c" >/dev/null 2>&1 || true
  done
  ((${#refs[@]} == 0)) || "${podman[@]}" rmi -f "${refs[@]}" >/dev/null 2>&1 || true
  "${podman[@]}" rmi -f "$base_ref" >/dev/null 2>&1 || true
  rm -rf "$work" target/.image-context-probe
  log "$( ((rc == 0)) && echo ok || echo FAILED) in $((SECONDS - started)) s"
}
trap cleanup EXIT
# Mounted into containers that run as 65532.
chmod 755 "$work"

# 1. The base image.
make_base_tar
"${podman[@]}" import -q "$base_tar" "$base_ref" >/dev/null

# 2. The five images from the binaries just built.
TAILOR_IMAGE_ENGINE="${podman[*]}" scripts/build-images.sh --from-binaries "$bins" \
  --base "$base_ref" --registry "$registry" >"$work/refs" 2>"$work/build.log" || {
  tail -30 "$work/build.log" >&2
  fail "build-images.sh failed"
}
mapfile -t refs <"$work/refs"
((${#refs[@]} == 5)) || fail "expected 5 images, build-images.sh printed: ${refs[*]}"
ref_of() { printf '%s\n' "${refs[@]}" | grep -x "$registry/tailor-$1:.*" || fail "no image tailor-$1"; }
log "built ${refs[*]} in $((SECONDS - started)) s"

# 3. The Dockerfiles' build context (`COPY . .` from the repository root) through .dockerignore:
# the sources, Cargo.lock and scripts/libtorch-libs.sh; no build output, no Git data.
probe_dir_made=false
[[ -d target ]] || { mkdir target && probe_dir_made=true; }
touch target/.image-context-probe
printf 'FROM %s\nCOPY . /ctx/\n' "$base_ref" >"$work/Context.Dockerfile"
refs+=("$registry/context:probe")
"${podman[@]}" build -q -f "$work/Context.Dockerfile" -t "$registry/context:probe" . >/dev/null
rm -f target/.image-context-probe
if $probe_dir_made; then rmdir target; fi
out="$("${run[@]}" --rm "$registry/context:probe" bash -c \
  'cd /ctx && ls Cargo.lock scripts/libtorch-libs.sh operator/src/main.rs && find . -name target -o -name .git' 2>&1)" ||
  fail "the build context lacks sources: $out"
[[ "$out" == $'Cargo.lock\noperator/src/main.rs\nscripts/libtorch-libs.sh' ]] ||
  fail "the build context (see .dockerignore) holds more or less than expected: $out"
"${podman[@]}" rmi "$registry/context:probe" >/dev/null
log "build context: sources without target/ and .git"

# 4. --version: each binary starts on its image (all its libraries found) as 65532 on a
# read-only root, and reports the version the image is tagged with (Cargo's).
for image in operator router fetch trainer server; do
  ref="$(ref_of "$image")"
  out="$("${run[@]}" --rm "$ref" --version 2>&1)" || fail "$ref --version: $out"
  [[ "$out" == "tailor-$image ${ref##*:}" ]] || fail "$ref --version printed '$out', expected 'tailor-$image ${ref##*:}'"
  log "$ref --version: $out"
done

# Inputs mounted read-only: a tiny model (as scripts/demo.sh makes it) and the quickstart data.
mkdir -p "$work/data"
grep -v '^\s*$' examples/quickstart/support-chat.jsonl >"$work/data/corpus.jsonl"
python3 model/tests/reference.py base-model "$work/model" "$work/data/corpus.jsonl" 384 48 2 4 2 96 \
  >/dev/null 2>"$work/model.log" || { cat "$work/model.log" >&2; fail "making the tiny model"; }
chmod -R a+rX "$work/model" "$work/data"

# 5. tailor-trainer prepare, writing only to /tmp; its stats equal the host binary's.
prepare=(prepare --format chat --input /data/corpus.jsonl --tokenizer /model --output /tmp/prepared)
out="$("${run[@]}" --rm -v "$work/data:/data:ro" -v "$work/model:/model:ro" "$(ref_of trainer)" \
  "${prepare[@]}" 2>"$work/prepare.log")" || fail "tailor-trainer prepare in the image: $(tail -5 "$work/prepare.log")"
host="$(cd "$work" && "$bins/tailor-trainer" prepare --format chat --input data/corpus.jsonl \
  --tokenizer model --output "$work/prepared" 2>/dev/null)"
[[ "$out" == "$host" ]] || fail "prepare in the image printed '$out', the host binary '$host'"
log "tailor-trainer prepare: $(cut -c1-100 <<<"$host")..."

# 6. tailor-fetch: a read-only mounted directory into /tmp, each file's sha256 checked.
sha="$(sha256sum "$work/model/model.safetensors" | cut -d' ' -f1)"
out="$("${run[@]}" --rm -v "$work/model:/model:ro" --entrypoint bash "$(ref_of fetch)" -c \
  "tailor-fetch file:///model /tmp/inputs/0 --expect-sha256 model.safetensors=$sha && ls /tmp/inputs/0" 2>&1)" ||
  fail "tailor-fetch in the image: $out"
for f in config.json model.safetensors tokenizer.json; do
  grep -qx "$f" <<<"$out" || fail "tailor-fetch did not fetch $f: $out"
done
log "tailor-fetch file:///model: $(tail -5 <<<"$out" | tr '\n' ' ')"

# HTTP from inside CONTAINER's network namespace: prints the status code, then the body.
http() { # CONTAINER PORT METHOD PATH [JSON_BODY]
  # shellcheck disable=SC2016 # expanded by the container's bash
  "${podman[@]}" exec "$1" bash -c '
    export LC_ALL=C
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 7
    printf "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" \
      "$1" "$2" "${#3}" "$3" >&3
    IFS=" " read -r _ code _ <&3 && echo "$code" && sed "1,/^\r$/d" <&3' "$2" "$3" "$4" "${5:-}" 2>/dev/null
}
# Waits up to 120 s for CONTAINER's PORT PATH to answer 200.
wait_200() { # CONTAINER PORT PATH
  local out
  for _ in $(seq 240); do
    out="$(http "$1" "$2" GET "$3" || true)"
    [[ "$(head -1 <<<"$out")" == 200 ]] && return 0
    [[ "$("${podman[@]}" inspect -f '{{.State.Running}}' "$1")" == true ]] || fail "$1 exited"
    sleep 0.5
  done
  fail "$1: GET $3 did not answer 200 within 120 s (last: $(head -c 300 <<<"$out"))"
}
expect() { # WHAT OUTPUT CODE PATTERN
  if [[ "$(head -1 <<<"$2")" != "$3" ]] || ! grep -q "$4" <<<"$2"; then
    fail "$1: expected $3 and /$4/, got: $(head -c 500 <<<"$2")"
  fi
  log "$1: $3"
}

# 7. tailor-server with the model mounted read-only, on the image's default listen address.
server="tailor-test-server-$$"
containers+=("$server")
"${run[@]}" -d --name "$server" -v "$work/model:/model:ro" "$(ref_of server)" \
  --model /model --served-model-name tiny --device cpu >/dev/null
wait_200 "$server" 8000 /health
log "tailor-server /health: 200"
wait_200 "$server" 8000 /ready
out="$(http "$server" 8000 GET /v1/models || true)"
expect "tailor-server /v1/models" "$out" 200 '"id":"tiny"'
out="$(http "$server" 8000 POST /v1/completions '{"model":"tiny","prompt":"Hello","max_tokens":4}' || true)"
expect "tailor-server POST /v1/completions" "$out" 200 '"choices":\[{'

# 8. tailor-router with its image's default command: the config at /etc/tailor-router, the API
# on 8080, admin on 9090.
mkdir -p "$work/router"
cat >"$work/router/config.yaml" <<'YAML'
routes:
  - model: support-bot
    targets:
      - name: stable
        backend: http://127.0.0.1:8000
        model: tiny
        weight: 100
YAML
chmod -R a+rX "$work/router"
router="tailor-test-router-$$"
containers+=("$router")
"${run[@]}" -d --name "$router" -v "$work/router:/etc/tailor-router:ro" "$(ref_of router)" >/dev/null
wait_200 "$router" 9090 /healthz
log "tailor-router /healthz: 200"
out="$(http "$router" 9090 GET /readyz || true)"
expect "tailor-router /readyz" "$out" 200 ''
out="$(http "$router" 8080 GET /v1/models || true)"
expect "tailor-router /v1/models" "$out" 200 '"id":"support-bot"'
# No backend in its network namespace: an OpenAI-shaped error, not a hang or a crash.
out="$(http "$router" 8080 POST /v1/chat/completions '{"model":"support-bot","messages":[{"role":"user","content":"hi"}]}' || true)"
expect "tailor-router POST /v1/chat/completions (backend unreachable)" "$out" 502 '"error"'
