#!/usr/bin/env bash
# Copies the shared libraries a libtorch binary (tailor-trainer, tailor-server) loads from the
# PyTorch wheel into DEST, and nothing else of the wheel: the image then needs only glibc,
# libstdc++ and libgcc_s from its base (distroless cc has them).
#
# Usage: scripts/libtorch-libs.sh BINARY DEST [--cuda]
#
#   without --cuda: what `ldd BINARY` resolves outside the system library directories
#                   (libtorch_cpu, libc10, libgomp, and libcudart/libcupti, which libtorch_cpu
#                   links even in a CPU process). Enough to run on CPU.
#   with --cuda:    also libtorch_cuda.so, which tailor-model loads with dlopen when a GPU is
#                   there, its linalg and NVRTC helpers (loaded by libtorch on first use), all
#                   they link (cuBLAS, cuDNN, cuFFT, cuSPARSE(Lt), cuRAND, cuSOLVER, NCCL, NVRTC,
#                   nvJitLink, cuFile, NVSHMEM), and the libraries those load with dlopen (cuDNN's
#                   engine libraries, NVRTC's builtins, NVSHMEM's bootstrap and transport plugins).
#                   Left out: libtorch_python, libshm, static archives and the profiling-only
#                   parts of CUPTI.
#
# BINARY's libraries are found the way it finds them at run time: LD_LIBRARY_PATH pointing at
# torch/lib (`eval "$(scripts/setup-libtorch.sh)"`), or the wheel's RUNPATHs. A library that is
# not found is an error, never skipped.
set -euo pipefail

usage() { echo "usage: $0 BINARY DEST [--cuda]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
binary="$1" dest="$2" cuda=false
if [[ $# -eq 3 ]]; then [[ "$3" == --cuda ]] || usage; cuda=true; fi
[[ -x "$binary" ]] || { echo "libtorch-libs: $binary: no such executable" >&2; exit 1; }

# `ldd FILE` as "name path" lines for every library outside the system directories (those come
# from the image's base). Fails on a library that is not found, except the driver's own
# (libcuda, libnvidia-*), which the NVIDIA container runtime mounts from the node.
wheel_libs() {
  local out
  out="$(ldd "$1")"
  if grep 'not found' <<<"$out" | grep -Evq '^\s*(libcuda\.so|libnvidia-)'; then
    echo "libtorch-libs: $1 needs libraries that are not found (is LD_LIBRARY_PATH set to torch/lib?):" >&2
    grep 'not found' <<<"$out" >&2
    return 1
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' <<<"$out" |
    grep -Ev ' /(usr/)?lib(64|/x86_64-linux-gnu|/aarch64-linux-gnu)?/[^/]+$' || true
}

mkdir -p "$dest"
copy() { # NAME PATH: copied under the name the loader asks for, symlinks resolved
  cp -L "$2" "$dest/$1"
}
copy_libs_of() { # FILE: the wheel's libraries FILE links
  local libs name path
  libs="$(wheel_libs "$1")"
  while read -r name path; do
    if [[ -n "$name" ]]; then copy "$name" "$path"; fi
  done <<<"$libs"
}

copy_libs_of "$binary"
[[ -f "$dest/libtorch_cpu.so" ]] || { echo "libtorch-libs: $binary does not link libtorch_cpu.so" >&2; exit 1; }
torch_lib="$(dirname "$(readlink -f "$(wheel_libs "$binary" | awk '$1 == "libtorch_cpu.so" { print $2 }')")")"

if $cuda; then
  site="$(dirname "$torch_lib")/.."
  [[ -f "$torch_lib/libtorch_cuda.so" ]] || {
    echo "libtorch-libs: $torch_lib has no libtorch_cuda.so (a CPU-only wheel?)" >&2
    exit 1
  }
  for lib in libtorch_cuda.so libtorch_cuda_linalg.so libcaffe2_nvrtc.so; do
    copy "$lib" "$torch_lib/$lib"
    copy_libs_of "$torch_lib/$lib"
  done
  # Loaded with dlopen, so invisible to ldd.
  shopt -s nullglob
  for path in "$site"/nvidia/cudnn/lib/libcudnn*.so.* "$site"/nvidia/cu*/lib/libnvrtc-builtins*.so.* \
    "$site"/nvidia/nvshmem/lib/*.so*; do
    copy "$(basename "$path")" "$path"
  done
fi

# What was copied must be enough on its own: the binary (and libtorch_cuda) resolve every
# library of the wheel inside DEST.
for f in "$binary" "$dest"/libtorch_cuda.so; do
  [[ -e "$f" ]] || continue
  LD_LIBRARY_PATH="$dest" wheel_libs "$f" | while read -r name path; do
    [[ "$path" -ef "$dest/$name" ]] || {
      echo "libtorch-libs: $f loads $name from $path, not from $dest" >&2
      exit 1
    }
  done
done
