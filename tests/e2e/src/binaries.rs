//! The workspace's binaries for the simulated cluster, from the workspace's own build.
//!
//! `cargo test --workspace --all-targets` (scripts/test.sh) builds every binary before any test
//! runs, so the suite finds them beside its own test binary. When a test runs on its own
//! (`cargo test -p tailor-e2e`), the binaries of the other packages may be missing or stale:
//! then the suite builds them exactly as the workspace build does, `cargo build --workspace
//! --all-targets`, once per process. The same packages and targets resolve the same features,
//! so this compiles nothing a second time; a `cargo build -p <package>` would (features resolve
//! per selected package) and did, which made a cold test run build many crates twice.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The repository root, from the manifest directory cargo gives the process at run time (`cargo
/// run`, `cargo test`), else the one this crate was compiled in. Run time first: a binary reused
/// from a shared target directory after the checkout moved would otherwise build and run the
/// sources of the old checkout (cargo does not rebuild when only the checkout's path changes).
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The profile directory of this process' own build (`target/debug`, `target/release`).
fn profile_dir() -> PathBuf {
    // .../target/debug/deps/<test binary> or .../target/debug/<bin>
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Build every workspace binary once per process, as the workspace build does (a no-op after
/// `cargo test --workspace --all-targets`: cargo only checks fingerprints).
fn build_workspace() -> anyhow::Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let dir = profile_dir();
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--workspace"]).current_dir(repo_root());
            if dir.file_name().is_some_and(|n| n == "release") {
                // Benchmarks: there is no release test build to match; the binaries suffice.
                cmd.args(["--bins", "--release"]);
            } else {
                cmd.arg("--all-targets");
            }
            if let Some(t) = dir.parent() {
                cmd.env("CARGO_TARGET_DIR", t);
            }
            // The variables cargo sets for this test process are not the workspace build's
            // environment: ring's build script reruns when CARGO_MANIFEST_DIR changes, and with it
            // rustls, kube and everything above them, once in here and once more in the next
            // top-level build (minutes of CPU taken from the running tests, every suite).
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                let set_by_cargo_test = [
                    "CARGO_MANIFEST_",
                    "CARGO_PKG_",
                    "CARGO_BIN_EXE_",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .iter()
                .any(|p| k.starts_with(p));
                if set_by_cargo_test {
                    cmd.env_remove(k.as_ref());
                }
            }
            let out = cmd
                .output()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "cargo build --workspace failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The path of a workspace binary of this build (`TAILOR_E2E_<NAME>_BIN` overrides it).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("TAILOR_E2E_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&var) {
        return Ok(PathBuf::from(p));
    }
    // Always let cargo decide freshness: a stale binary from an earlier build would test old code.
    build_workspace().context("building the workspace's binaries")?;
    let path = profile_dir().join(name);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}
