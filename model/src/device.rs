//! Choosing the device, and making libtorch's CUDA backend available at all.
//!
//! `libtorch_cuda.so` registers its kernels with the dispatcher from static initialisers; no
//! symbol of it is referenced by tch's bindings, so the linker's `--as-needed` drops it from the
//! binaries' dependencies and CUDA would never be available. [`cuda_available`] loads it first
//! (once), from the same library path as `libtorch_cpu.so`; a CPU-only libtorch has no such file.

use std::sync::OnceLock;

use tch::Device;

use crate::error::{ModelError, Result};

/// Loads `libtorch_cuda.so` if this libtorch has one; returns whether it is loaded.
pub fn load_cuda_backend() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        // SAFETY: the library is libtorch's own CUDA backend, built together with the
        // libtorch_cpu.so already loaded; loading it only runs its kernel registrations. It is
        // never unloaded (the handle is leaked), so no registered code outlives its library.
        #[allow(unsafe_code)]
        let loaded = unsafe { libloading::Library::new("libtorch_cuda.so") };
        match loaded {
            Ok(lib) => {
                std::mem::forget(lib);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "no CUDA backend in this libtorch");
                false
            }
        }
    })
}

/// Whether a CUDA device can be used (loading the backend first).
pub fn cuda_available() -> bool {
    load_cuda_backend() && tch::Cuda::is_available()
}

/// The first CUDA device when there is one, else the CPU.
pub fn default_device() -> Device {
    if cuda_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// `auto`, `cpu` or `cuda` (`cuda:N` for another card); asking for CUDA where there is none is an
/// error rather than a silent fall back to the CPU.
pub fn parse_device(name: &str) -> Result<Device> {
    let cuda = |i: usize| {
        if !cuda_available() {
            return Err(ModelError::Device(format!(
                "{name:?} requested but no CUDA device is available (is libtorch_cuda.so on the library path?)"
            )));
        }
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        if i >= count {
            return Err(ModelError::Device(format!(
                "{name:?} requested but there are only {count} CUDA devices"
            )));
        }
        Ok(Device::Cuda(i))
    };
    match name {
        "auto" => Ok(default_device()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(ModelError::Device(format!(
                "unknown device {other:?}: expected auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_refuses_unknown_ones() {
        assert_eq!(parse_device("cpu").ok(), Some(Device::Cpu));
        assert_eq!(parse_device("auto").ok(), Some(default_device()));
        let err = parse_device("tpu").expect_err("unknown").to_string();
        assert!(err.contains("\"tpu\"") && err.contains("cuda:N"), "{err}");
        assert!(parse_device("cuda:x").is_err());
        if !cuda_available() {
            let err = parse_device("cuda").expect_err("no CUDA here").to_string();
            assert!(err.contains("no CUDA device"), "{err}");
        }
    }
}
