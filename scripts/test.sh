#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, integration tests that start the real binaries,
# and the cross-checks against transformers/peft/openai (from the libtorch virtualenv).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests drive for real, installed when missing (as .ci/run does): Prometheus
# (scrapes /metrics; promtool checks rules), Lua (runs the Argo CD health checks), and podman,
# runc and debootstrap (the images are built and started: scripts/test-images.sh). No test
# skips without them: they fail saying what is missing.
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v lua5.4 >/dev/null || missing+=(lua5.4)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The image test's Debian base (a cold cache bootstraps it: network and disk, little CPU) is made
# in the background while the libtorch virtualenv is set up and the workspace compiles.
base_log="$(mktemp)"
scripts/test-images.sh --base-only >"$base_log" 2>&1 &
base_pid=$!
trap 'kill "$base_pid" 2>/dev/null || true; rm -f "$base_log"' EXIT

eval "$(scripts/setup-libtorch.sh)"
# OpenMP threads that sleep when idle, as in the trainer and server images: libtorch in the test
# processes, the binaries they start and the Python cross-checks share two cores here, and
# spin-waiting threads took a third of the end-to-end suite's time.
export OMP_WAIT_POLICY=PASSIVE
# One build of every target (the e2e suite runs the binaries this build makes, never a build of
# its own), then the test binaries two at a time (scripts/run_tests.py; TAILOR_TEST_JOBS=1 runs
# them one after another as `cargo test` does). Arguments are cargo's; after `--`, the tests'.
# Beside them, the five images, assembled from the binaries this build just made, start on a
# read-only root (it waits for the base above if that is still being made).
python3 scripts/run_tests.py --also "scripts/test-images.sh ${CARGO_TARGET_DIR:-target}/debug" "$@"
# The image test passed, so a failed head start above cost only time; say so all the same.
wait "$base_pid" || { cat "$base_log" >&2; echo "test.sh: the image base's head start failed (above)" >&2; }
