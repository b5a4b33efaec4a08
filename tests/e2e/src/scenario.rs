//! The setup e2e tests repeat, as builders: a namespace of one test (with its artifact claim),
//! Datasets of quickstart lines, small FineTuneJobs that train in seconds on CPU, and
//! ModelDeployments with a fast rollout.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::wait::{describe, wait_for, wait_phase};
use crate::{Env, repo_root};

/// The base model every scenario trains and serves (a tiny random Llama the suite writes).
pub const BASE_MODEL: &str = "pvc://tailor-artifacts/models/base";

/// Where [`Scenario::import_adapters`] writes its PEFT-initialised adapter, in the namespace's
/// own artifact area.
pub const IMPORTED: &str = "adapters/e2e-imported";

/// One test's namespace in the suite's cluster.
pub struct Scenario {
    pub env: &'static Env,
    pub ns: String,
}

impl Scenario {
    /// The cluster of this test process (started on first use) and a namespace `ns` in it with a
    /// `tailor-artifacts` claim on the shared artifact storage.
    pub fn new(ns: &str) -> Scenario {
        let env = Env::get();
        env.namespace(ns).expect("namespace");
        Scenario {
            env,
            ns: ns.to_string(),
        }
    }

    /// A namespace `ns` in `env`'s cluster with no claim at all (an operator with an artifact
    /// store needs none).
    pub fn without_claim(env: &'static Env, ns: &str) -> Scenario {
        env.bare_namespace(ns).expect("namespace");
        Scenario {
            env,
            ns: ns.to_string(),
        }
    }

    /// A generic Secret `name` in the namespace with these keys and values.
    pub fn secret(&self, name: &str, pairs: &[(String, String)]) {
        let literals: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("--from-literal={k}={v}"))
            .collect();
        let mut args = vec!["-n", self.ns(), "create", "secret", "generic", name];
        args.extend(literals.iter().map(String::as_str));
        self.env.kubectl(&args).expect("create Secret");
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// A file of the artifact store by the URI this namespace's objects use.
    pub fn artifact_path(&self, uri: &str) -> Option<std::path::PathBuf> {
        self.env.artifact_path(&self.ns, uri)
    }

    /// `kubectl apply` a manifest; `Err` carries kubectl's stderr (admission refusals).
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.env.apply(yaml)
    }

    /// A Dataset of `lines` (minExamples 10, a 20% validation split).
    pub fn dataset(&self, name: &str, lines: &[String]) {
        self.dataset_min(name, lines, 10);
    }

    /// A Dataset of `lines` that needs `min_examples` valid ones.
    pub fn dataset_min(&self, name: &str, lines: &[String], min_examples: u32) {
        self.apply(&inline_dataset(&self.ns, name, lines, min_examples))
            .unwrap_or_else(|e| panic!("apply Dataset {name}: {e:#}"));
    }

    /// A Dataset of the first `n` distinct valid quickstart examples.
    pub fn quickstart_dataset(&self, name: &str, n: usize) {
        let lines: Vec<String> = quickstart_examples().into_iter().take(n).collect();
        self.dataset(name, &lines);
    }

    /// Apply a FineTuneJob (panics if admission refuses it).
    pub fn job(&self, job: &FineTuneJob) {
        self.apply(&job.yaml(&self.ns))
            .unwrap_or_else(|e| panic!("apply FineTuneJob {}: {e:#}", job.name));
    }

    /// An object of this namespace, if it exists.
    pub fn object(&self, kind: &str, name: &str) -> Option<Value> {
        self.env.object(&self.ns, kind, name)
    }

    /// Waits until `kind/name` is in phase `want`.
    pub fn wait_phase(&self, kind: &str, name: &str, want: &str, timeout: Duration) -> Value {
        wait_phase(self.env, &self.ns, kind, name, want, timeout)
    }

    /// Polls `f` until it returns `Some`; on timeout the failure shows this namespace.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        wait_for(what, timeout, f, self.describe())
    }

    /// What a failure prints about this namespace.
    pub fn describe(&self) -> impl Fn() -> String + 'static {
        describe(self.env, &self.ns)
    }

    /// `kubectl -n <ns> <args>`; `Err` carries stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-n", self.ns.as_str()];
        a.extend_from_slice(args);
        self.env.kubectl(&a)
    }

    /// `kubectl -n <ns> get <args> -o json`.
    pub fn get_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = vec!["-n", self.ns.as_str(), "get"];
        a.extend_from_slice(args);
        self.env.get_json(&a)
    }

    /// A merge patch of `kind/name`.
    pub fn merge_patch(&self, kind: &str, name: &str, patch: &str) -> anyhow::Result<String> {
        self.kubectl(&["patch", kind, name, "--type", "merge", "-p", patch])
    }

    /// Writes one PEFT-initialised adapter (PEFT's own initialisation of the base model) into
    /// this namespace's artifact area, once: what a user would upload.
    pub fn imported_artifact(&self) {
        static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        if done.iter().any(|ns| ns == self.ns()) {
            return;
        }
        if let (Some(base), Some(out)) = (
            self.artifact_path(BASE_MODEL),
            self.artifact_path(&format!("pvc://tailor-artifacts/{IMPORTED}")),
        ) && !out.join("adapter_model.safetensors").exists()
        {
            let res = Command::new("python3")
                .arg(repo_root().join("model/tests/reference.py"))
                .arg("peft-init")
                .arg(&base)
                .arg(&out)
                .args(["q_proj,v_proj", "4", "8", "7"])
                .output()
                .expect("python3");
            assert!(
                res.status.success(),
                "peft-init: {}",
                String::from_utf8_lossy(&res.stderr)
            );
        }
        done.push(self.ns().to_string());
    }

    /// LoraAdapters imported by hand (one artifact, a name each), waited for until Ready.
    pub fn import_adapters(&self, names: &[&str]) {
        let ns = self.ns();
        self.imported_artifact();
        for n in names {
            self.apply(&format!(
                "apiVersion: tailor.dev/v1alpha1\nkind: LoraAdapter\nmetadata: {{name: {n}, namespace: {ns}}}\nspec:\n  baseModel: {{uri: {BASE_MODEL}}}\n  uri: pvc://tailor-artifacts/{IMPORTED}\n  rank: 4\n  alpha: 8\n  targetModules: [q_proj, v_proj]\n  deletionPolicy: Retain\n"
            ))
            .expect("apply LoraAdapter");
        }
        for n in names {
            self.wait_phase("loraadapter", n, "Ready", Duration::from_secs(120));
        }
    }

    /// Everything a secret must never appear in: the operator's log, every Event and every tailor
    /// object of the cluster, and the logs of every container (init containers too) of this
    /// namespace's pods.
    pub fn logs_events_and_statuses(&self) -> String {
        let mut all = String::new();
        for args in [
            vec![
                "-n",
                "tailor-system",
                "logs",
                "deploy/tailor-operator",
                "--tail=-1",
            ],
            vec!["get", "events", "-A", "-o", "json"],
            vec!["get", "tailor", "-A", "-o", "json"],
        ] {
            all.push_str(&self.env.kubectl(&args).unwrap_or_default());
        }
        let pods = self.get_json(&["pods"]).unwrap_or_default();
        for p in pods["items"].as_array().into_iter().flatten() {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            all.push_str(
                &self
                    .kubectl(&["logs", name, "--all-containers", "--tail=-1"])
                    .unwrap_or_default(),
            );
        }
        all
    }

    /// The Events of this namespace.
    pub fn events(&self) -> Vec<Value> {
        self.get_json(&["events"])
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// A small FineTuneJob (seconds on CPU): LoRA rank 4 on q/v, batch 4, sequences of 128, one
/// GPU, a checkpoint every 5 steps, four retries.
#[derive(Debug, Clone)]
pub struct FineTuneJob {
    pub name: String,
    pub dataset: String,
    pub epochs: u32,
    pub gpus: u32,
    pub backoff_limit: u32,
    pub base_model: String,
    pub target_modules: Vec<String>,
}

impl FineTuneJob {
    pub fn new(name: &str, dataset: &str) -> FineTuneJob {
        FineTuneJob {
            name: name.into(),
            dataset: dataset.into(),
            epochs: 1,
            gpus: 1,
            backoff_limit: 4,
            base_model: BASE_MODEL.into(),
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }

    pub fn epochs(mut self, n: u32) -> Self {
        self.epochs = n;
        self
    }

    pub fn gpus(mut self, n: u32) -> Self {
        self.gpus = n;
        self
    }

    pub fn backoff_limit(mut self, n: u32) -> Self {
        self.backoff_limit = n;
        self
    }

    pub fn base_model(mut self, uri: &str) -> Self {
        self.base_model = uri.into();
        self
    }

    pub fn target_modules(mut self, modules: &[&str]) -> Self {
        self.target_modules = modules.iter().map(|m| m.to_string()).collect();
        self
    }

    pub fn yaml(&self, ns: &str) -> String {
        format!(
            "apiVersion: tailor.dev/v1alpha1\nkind: FineTuneJob\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  baseModel: {{uri: {base}}}\n  datasetRef: {{name: {dataset}}}\n  lora: {{rank: 4, alpha: 8, targetModules: [{modules}]}}\n  hyperparameters: {{epochs: {epochs}, batchSize: 4, maxSeqLength: 128, learningRate: 0.001}}\n  resources: {{gpus: {gpus}}}\n  checkpointEverySteps: 5\n  backoffLimit: {backoff}\n",
            name = self.name,
            base = self.base_model,
            dataset = self.dataset,
            modules = self.target_modules.join(", "),
            epochs = self.epochs,
            gpus = self.gpus,
            backoff = self.backoff_limit,
        )
    }
}

/// A ModelDeployment serving one adapter as the model `support` beside the base model `base`,
/// on CPU, small server settings, and the given rollout.
#[derive(Debug, Clone)]
pub struct ModelDeployment {
    pub name: String,
    pub adapter: String,
    pub replicas: u32,
    pub gpus: u32,
    pub rollout: Value,
    pub annotations: Value,
}

impl ModelDeployment {
    pub fn new(name: &str, adapter: &str) -> ModelDeployment {
        ModelDeployment {
            name: name.into(),
            adapter: adapter.into(),
            replicas: 1,
            gpus: 0,
            rollout: json!({}),
            annotations: json!({}),
        }
    }

    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    pub fn gpus(mut self, n: u32) -> Self {
        self.gpus = n;
        self
    }

    pub fn rollout(mut self, rollout: Value) -> Self {
        self.rollout = rollout;
        self
    }

    pub fn annotations(mut self, annotations: Value) -> Self {
        self.annotations = annotations;
        self
    }

    pub fn manifest(&self, ns: &str) -> Value {
        json!({
            "apiVersion": "tailor.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": self.name, "namespace": ns, "annotations": self.annotations},
            "spec": {
                "baseModel": {"uri": BASE_MODEL, "servedName": "base"},
                "adapters": [{"name": "support", "adapterRef": {"name": self.adapter}}],
                "replicas": self.replicas,
                "resources": {"gpus": self.gpus},
                "server": {"maxBatchSize": 8, "maxSeqLength": 256, "maxLoadedAdapters": 4},
                "rollout": self.rollout,
            }
        })
    }
}

/// Whether a line is a chat example preparation keeps: JSON with `messages` of role/content
/// strings, at least one non-empty assistant message.
pub fn is_valid_chat(line: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    let Some(msgs) = v["messages"].as_array() else {
        return false;
    };
    msgs.iter()
        .all(|m| m["role"].is_string() && m["content"].is_string())
        && msgs.iter().any(|m| {
            m["role"] == "assistant" && m["content"].as_str().is_some_and(|c| !c.trim().is_empty())
        })
}

/// The distinct valid lines of the quickstart dataset (for building other datasets).
pub fn quickstart_examples() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart/support-chat.jsonl"))
        .unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    text.lines()
        .filter(|l| is_valid_chat(l) && seen.insert(l.to_string()))
        .map(String::from)
        .collect()
}

/// Inline Dataset YAML with the given JSONL lines.
pub fn inline_dataset(ns: &str, name: &str, lines: &[String], min_examples: u32) -> String {
    let mut body = String::new();
    for l in lines {
        body.push_str("      ");
        body.push_str(l);
        body.push('\n');
    }
    format!(
        "apiVersion: tailor.dev/v1alpha1\nkind: Dataset\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  format: chat\n  preparation:\n    minExamples: {min_examples}\n    split: {{validation: 0.2}}\n  source:\n    inline: |\n{body}"
    )
}

/// One question ("How do I reset my password?") to each of `models` at `endpoint` through the
/// official `openai` client (`tests/e2e/tests/serving_client.py ask`): {model: {content, model,
/// usage}}.
pub fn ask(endpoint: &str, models: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/e2e/tests/serving_client.py"))
        .args(["ask", endpoint, "How do I reset my password?"])
        .args(models)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "openai client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("client JSON")
}
