//! tailor-e2e: the whole flow — install, Dataset, FineTuneJob, LoraAdapter, faults — against a
//! cluster, and the plumbing tests share: the cluster ([`Env`]), one polling helper
//! ([`wait_for`]), and builders for the setup tests repeat ([`Scenario`], [`FineTuneJob`],
//! [`ModelDeployment`]).
//!
//! With `TAILOR_E2E_KUBECONFIG` the suite runs against that cluster (tailor installed with
//! `TAILOR_E2E_OVERLAY`, default `manifests/overlays/kind`; the images must be loadable there;
//! the base model must exist at `pvc://tailor-artifacts/models/base` of each test namespace, and
//! `TAILOR_E2E_ARTIFACTS_DIR` may name a host path of the shared artifact storage for the
//! file-level checks). Otherwise it starts `tailor-sim` itself: a state directory in a temp dir,
//! `--image` mappings to the `tailor-operator`, `tailor-trainer`, `tailor-server`, `tailor-fetch` and
//! `tailor-router` binaries of the workspace's own build ([`binary`]) (and `vllm/vllm-openai` to
//! `tailor-server`, which stands in for vLLM),
//! `kubectl apply -k manifests/overlays/sim`, the operator running as its Deployment's pod with
//! its ServiceAccount token, and a tiny random Llama written into the artifact volume.
//!
//! Artifact storage: the operator verifies adapters by reading the artifact claim it mounts in
//! its own namespace, so every namespace's `tailor-artifacts` claim must be backed by the same
//! storage (an RWX share bound in each namespace). In the simulator, where each claim gets its
//! own directory, [`Env::namespace`] points a namespace's volume at the shared one, as an admin
//! binding one NFS export in several namespaces would.

mod binaries;
pub mod scenario;
pub mod wait;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

pub use binaries::{binary, repo_root};
pub use scenario::{
    BASE_MODEL, FineTuneJob, IMPORTED, ModelDeployment, Scenario, ask, inline_dataset,
    is_valid_chat, quickstart_examples,
};
pub use wait::{describe, wait_for, wait_phase};

/// A cluster under test.
pub struct Env {
    pub kubeconfig: PathBuf,
    /// Host path of the shared artifact storage, when the suite can see it.
    pub artifacts: Option<PathBuf>,
    /// Where the simulator keeps its state and logs (sim mode).
    pub state_dir: Option<PathBuf>,
    _sim: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

/// Uploads `dir` to the bucket `uri` with `tailor-fetch --upload`, the store's variables in
/// `env` (a test's object store).
pub fn upload(dir: &Path, uri: &str, env: &[(String, String)]) {
    let out = Command::new(binary("tailor-fetch").expect("tailor-fetch"))
        .arg("--upload")
        .arg(dir)
        .arg(uri)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run tailor-fetch");
    assert!(
        out.status.success(),
        "upload {uri}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static ENV: OnceLock<Env> = OnceLock::new();
/// The overlay tailor is installed from on tailor-sim.
pub const SIM_OVERLAY: &str = "manifests/overlays/sim";

impl Env {
    /// The one cluster of this test process, started on first use.
    pub fn get() -> &'static Env {
        Env::get_with(SIM_OVERLAY)
    }

    /// [`Env::get`], with tailor installed on tailor-sim from `overlay` (a test binary whose
    /// operator needs another config; only the first call's overlay counts, as there is one
    /// cluster per process).
    pub fn get_with(overlay: &str) -> &'static Env {
        ENV.get_or_init(|| match Env::start(overlay) {
            Ok(e) => e,
            Err(e) => panic!("starting the e2e environment: {e:#}"),
        })
    }

    fn start(sim_overlay: &str) -> anyhow::Result<Env> {
        if let Ok(kc) = std::env::var("TAILOR_E2E_KUBECONFIG") {
            let env = Env {
                kubeconfig: PathBuf::from(kc),
                artifacts: std::env::var("TAILOR_E2E_ARTIFACTS_DIR")
                    .ok()
                    .map(PathBuf::from),
                state_dir: None,
                _sim: None,
                _tmp: None,
            };
            let overlay = std::env::var("TAILOR_E2E_OVERLAY")
                .unwrap_or_else(|_| "manifests/overlays/kind".into());
            env.install(&overlay)?;
            return Ok(env);
        }
        let sim = binary("tailor-sim")?;
        let operator = binary("tailor-operator")?;
        let trainer = binary("tailor-trainer")?;
        let server = binary("tailor-server")?;
        let router = binary("tailor-router")?;
        let fetch = binary("tailor-fetch")?;
        let tmp = tempfile::Builder::new().prefix("tailor-e2e-").tempdir()?;
        let state = tmp.path().join("sim");
        let kubeconfig = tmp.path().join("kubeconfig");
        let log = std::fs::File::create(tmp.path().join("sim.log"))?;
        // The wrapper ends the simulator (and so its pods) when this process exits for any
        // reason: its stdin is our pipe, which closes with us. Then it removes the state.
        let child = Command::new("sh")
            .args([
                "-c",
                "\"$@\" & pid=$!; cat >/dev/null; kill -TERM $pid; wait $pid; [ -n \"$TAILOR_E2E_KEEP\" ] || rm -rf \"$TAILOR_E2E_CLEANUP\"",
                "sh",
            ])
            .arg(&sim)
            .args(["up", "--state-dir"])
            .arg(&state)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--image")
            .arg(format!("tailor-operator={}", operator.display()))
            .arg("--image")
            .arg(format!("tailor-trainer={}", trainer.display()))
            .arg("--image")
            .arg(format!("tailor-server={}", server.display()))
            // tailor-server stands in for vLLM (`vllm serve ...`) under `runtime: vllm`.
            .arg("--image")
            .arg(format!("vllm/vllm-openai={}", server.display()))
            .arg("--image")
            .arg(format!("tailor-router={}", router.display()))
            .arg("--image")
            .arg(format!("tailor-fetch={}", fetch.display()))
            .env("RUST_LOG", "warn")
            // The pods run the binaries, not the images: give them the images' ENV that matters
            // here. Spin-waiting OpenMP threads of every trainer and server on two shared cores
            // made the flow suite a third slower.
            .env("OMP_WAIT_POLICY", "PASSIVE")
            // The static Env is never dropped: the wrapper removes the state after the sim
            // exits (set TAILOR_E2E_KEEP to keep it for a post-mortem).
            .env("TAILOR_E2E_CLEANUP", tmp.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tailor-sim")?;
        let mut env = Env {
            kubeconfig,
            artifacts: None,
            state_dir: Some(state),
            _sim: Some(child),
            _tmp: Some(tmp),
        };
        let sim_log = env
            ._tmp
            .as_ref()
            .map(|t| t.path().join("sim.log"))
            .unwrap_or_default();
        wait_for(
            "tailor-sim to serve",
            Duration::from_secs(90),
            || {
                (env.kubeconfig.exists() && env.kubectl(&["get", "namespace", "default"]).is_ok())
                    .then_some(())
            },
            || std::fs::read_to_string(&sim_log).unwrap_or_default(),
        );
        env.install(sim_overlay)?;
        let shared = env.volume_dir("tailor-system", "tailor-artifacts")?;
        make_base_model(&shared.join("models/base"))?;
        env.artifacts = Some(shared);
        Ok(env)
    }

    fn install(&self, overlay: &str) -> anyhow::Result<()> {
        let dir = repo_root().join(overlay);
        // CRDs first: the rest of the install may not refer to them, but a second pass is cheap.
        self.kubectl(&["apply", "-k", &dir.to_string_lossy()])?;
        self.ready_operator_pod();
        Ok(())
    }

    /// Waits (up to two minutes) for a Ready operator pod: tests share one cluster, and one of
    /// them may be restarting the operator right now.
    pub fn ready_operator_pod(&self) -> Value {
        wait_for(
            "the operator pod to be Ready",
            Duration::from_secs(120),
            || self.operator_pod().filter(is_ready),
            || {
                self.kubectl(&["-n", "tailor-system", "get", "pods", "-o", "yaml"])
                    .unwrap_or_default()
            },
        )
    }

    /// The Ready operator pod, if any.
    pub fn operator_pod(&self) -> Option<Value> {
        let pods = self
            .get_json(&[
                "-n",
                "tailor-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=tailor-operator",
            ])
            .ok()?;
        pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .find(|p| p["status"]["phase"] == "Running")
            .cloned()
    }

    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl; `Err` carries stderr.
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl")?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
    }

    pub fn get_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&a)?)?)
    }

    /// An object, or `None` when it does not exist (or cannot be read).
    pub fn object(&self, ns: &str, kind: &str, name: &str) -> Option<Value> {
        self.get_json(&["-n", ns, "get", kind, name]).ok()
    }

    /// The host directory backing a bound claim (sim mode).
    fn volume_dir(&self, ns: &str, claim: &str) -> anyhow::Result<PathBuf> {
        let env = self;
        let pv = wait_for(
            &format!("claim {ns}/{claim} to be bound"),
            Duration::from_secs(60),
            || {
                let pvc = env.object(ns, "pvc", claim)?;
                pvc["spec"]["volumeName"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from)
            },
            || {
                env.kubectl(&["-n", ns, "get", "pvc", "-o", "yaml"])
                    .unwrap_or_default()
            },
        );
        let pv = self.get_json(&["get", "pv", &pv])?;
        let path = pv["spec"]["hostPath"]["path"]
            .as_str()
            .context("the simulator's volumes are hostPath volumes")?;
        Ok(PathBuf::from(path))
    }

    /// Creates a namespace with a `tailor-artifacts` claim on the shared artifact storage. It
    /// enforces the `restricted` Pod Security level, as production namespaces do: every pod
    /// the operator creates must meet it.
    /// A namespace under the `restricted` Pod Security Standard, and nothing in it.
    pub fn bare_namespace(&self, ns: &str) -> anyhow::Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
        ))
        .map(|_| ())
    }

    pub fn namespace(&self, ns: &str) -> anyhow::Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: tailor-artifacts\n  namespace: {ns}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 20Gi\n"
        ))?;
        if let (Some(shared), Some(_)) = (&self.artifacts, &self.state_dir) {
            let dir = self.volume_dir(ns, "tailor-artifacts")?;
            if std::fs::read_link(&dir).is_err() {
                // Freshly provisioned and empty: bind it to the shared storage.
                std::fs::remove_dir(&dir)
                    .with_context(|| format!("{} should be an empty new volume", dir.display()))?;
                std::os::unix::fs::symlink(shared, &dir)?;
            }
        }
        Ok(())
    }

    /// A file of the shared artifact storage, by the `pvc://tailor-artifacts/<path>` URI a
    /// tenant of `ns` writes: inside that namespace's area (`<store>/<ns>/<path>`), except for
    /// the admin's shared prefix `models`, which lies at the store's root (the operator's
    /// `sharedPrefixes`).
    pub fn artifact_path(&self, ns: &str, uri: &str) -> Option<PathBuf> {
        let rest = uri.strip_prefix("pvc://tailor-artifacts/")?;
        let store = self.artifacts.as_ref()?;
        Some(if rest.split('/').next() == Some("models") {
            store.join(rest)
        } else {
            store.join(ns).join(rest)
        })
    }

    /// Operator logs (for failure messages).
    pub fn operator_logs(&self) -> String {
        self.kubectl(&[
            "-n",
            "tailor-system",
            "logs",
            "deploy/tailor-operator",
            "--tail",
            "60",
        ])
        .unwrap_or_else(|e| e.to_string())
    }
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A tiny random Llama (with a tokenizer trained on the quickstart data), by the model crate's
/// reference generator (transformers).
fn make_base_model(out: &Path) -> anyhow::Result<()> {
    if out.join("config.json").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(out)?;
    let data = out.join("corpus.jsonl");
    std::fs::write(&data, quickstart_examples().join("\n") + "\n")?;
    let script = repo_root().join("model/tests/reference.py");
    let res = Command::new("python3")
        .arg(&script)
        .args(["base-model"])
        .arg(out)
        .arg(&data)
        // vocab hidden layers heads kv_heads intermediate
        .args(["384", "48", "2", "4", "2", "96"])
        .output()
        .context("running python3 (the venv of scripts/setup-libtorch.sh)")?;
    if !res.status.success() {
        bail!(
            "making the base model: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    let _ = std::fs::remove_file(&data);
    Ok(())
}

/// `status.phase` of an object.
pub fn phase(obj: &Value) -> &str {
    obj["status"]["phase"].as_str().unwrap_or("")
}

/// A condition of an object's status.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}
