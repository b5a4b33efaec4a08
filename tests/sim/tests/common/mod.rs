//! Start a real tailor-sim process for a test and drive it with the real kubectl.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Sim {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

pub fn repo_root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)"))
        .join("../..")
}

pub fn testpod() -> String {
    env!("CARGO_BIN_EXE_tailor-sim-testpod").to_string()
}

/// Poll until `f` returns Some, failing the test with `what` at the deadline (the e2e suite's
/// polling helper, without a description of the cluster).
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    tailor_e2e::wait_for(what, timeout, f, String::new)
}

impl Sim {
    pub fn start(extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut sim = Sim {
            dir,
            kubeconfig,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        sim.spawn();
        sim
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let state = self.dir.path().join("state");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailor-sim"));
        cmd.arg("up")
            .arg("--state-dir")
            .arg(&state)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig);
        cmd.args(["--image", &format!("testpod={}", testpod())]);
        cmd.args(["--image", "busybox=/bin/sh"]);
        if let Some(k) = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubectl"))
                .find(|k| k.exists())
        }) {
            cmd.arg("--image")
                .arg(format!("bitnami/kubectl={}", k.display()));
        }
        cmd.args(&self.extra);
        cmd.stdout(Stdio::null());
        cmd.stderr(Stdio::from(
            std::fs::File::create(self.dir.path().join("sim.log")).expect("log file"),
        ));
        self.child = Some(cmd.spawn().expect("start tailor-sim"));
        let kc = self.kubeconfig.clone();
        wait_for(
            "tailor-sim to write its kubeconfig",
            Duration::from_secs(60),
            || kc.exists().then_some(()),
        );
        wait_for("tailor-sim to serve", Duration::from_secs(30), || {
            self.kubectl(&["get", "--raw", "/readyz"])
                .status
                .success()
                .then_some(())
        });
        // The bootstrap controllers create the default ServiceAccount shortly after start.
        wait_for("default serviceaccount", Duration::from_secs(30), || {
            self.kubectl(&["get", "sa", "default"])
                .status
                .success()
                .then_some(())
        });
    }

    /// Stop with SIGTERM (as an operator would) and start again on the same state dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kill with SIGKILL (a crash: nothing is stopped or saved) and start again on the same
    /// state dir.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// The objects tailor-sim last saved in its state dir, by type key (`/pods`, `apps/deployments`).
    pub fn saved_objects(&self) -> serde_json::Value {
        std::fs::read(self.dir.path().join("state").join("objects.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn stop(&mut self) {
        self.terminate(Duration::from_secs(20));
    }

    /// SIGTERM the simulator and wait up to `within` for it to exit: its exit status, or None
    /// if it did not exit in time (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// The simulator's API port (from its kubeconfig).
    pub fn port(&self) -> String {
        let kc = std::fs::read_to_string(&self.kubeconfig).unwrap_or_default();
        kc.lines()
            .find_map(|l| l.trim().strip_prefix("server: https://"))
            .and_then(|a| a.rsplit(':').next())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sim.log")).unwrap_or_default()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(repo_root())
            .output()
            .expect("run kubectl")
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n--- sim log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log())
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let jp = format!("jsonpath={path}");
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-o", &jp]);
        let out = self.kubectl(&a);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}
