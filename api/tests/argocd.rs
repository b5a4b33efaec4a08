//! The Argo CD health checks in `manifests/argocd/health/*.lua`, run by a real Lua interpreter
//! (`lua5.4`, Debian package `lua5.4`) against objects built from the typed API structs, the way
//! Argo CD runs them: the live object as the global `obj`, the script's return value read back.
//! Also: `argocd-cm-patch.yaml` carries the scripts verbatim, and the example Applications point
//! at paths that exist.
//!
//! Regenerate the ConfigMap patch after editing a script:
//! `TAILOR_BLESS=1 cargo test -p tailor-api --test argocd`.
//!
//! Size (over 700 lines, on purpose): one suite of the health scripts, one test per kind, each a
//! table of objects and the health Argo CD must read from them; all share one Lua harness
//! (`to_lua`, `health`) and the example objects.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;
use serde_json::{Value, json};
use tailor_api::conditions::{self, DEGRADED, PROGRESSING, READY, ROLLED_BACK, SCHEDULED};
use tailor_api::*;

const KINDS: [&str; 4] = ["Dataset", "FineTuneJob", "LoraAdapter", "ModelDeployment"];

fn argocd_dir() -> PathBuf {
    common::repo_root().join("manifests/argocd")
}

fn script_path(kind: &str) -> PathBuf {
    argocd_dir().join("health").join(format!("{kind}.lua"))
}

/// A JSON value as a Lua table constructor. `null` becomes an absent key, as in Argo CD, where
/// the object comes from unstructured JSON with nulls dropped.
fn to_lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(to_lua).collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), to_lua(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // Decimal escapes exist in every Lua version; other characters pass as UTF-8.
            c if c.is_ascii_control() => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs the kind's health check on `obj` and returns (status, message).
fn health(kind: &str, obj: &impl Serialize) -> (String, String) {
    let json = serde_json::to_value(obj).expect("object to JSON");
    assert_eq!(json["kind"], kind, "object kind");
    let script = script_path(kind);
    let harness = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\nassert(type(hs) == 'table', 'health check must return a table')\nio.write(tostring(hs.status), '\\0', tostring(hs.message))\n",
        to_lua(&json),
        lua_string(&script.to_string_lossy()),
    );
    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.4 on PATH (Debian package lua5.4; .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(harness.as_bytes())
        .expect("write harness");
    let out = child.wait_with_output().expect("lua5.4 runs");
    assert!(
        out.status.success(),
        "{kind}.lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let (status, message) = text.split_once('\0').expect("status and message");
    (status.to_string(), message.to_string())
}

fn example<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let docs = common::yaml_docs(&common::repo_root().join(path));
    serde_json::from_value(docs.into_iter().next().expect("one document")).expect("typed example")
}

fn cond(type_: &str, status: bool, reason: &str, message: &str, generation: i64) -> Condition {
    conditions::new(type_, Some(status), reason, message, Some(generation))
}

fn at_generation<K: kube::Resource>(mut obj: K, generation: i64) -> K {
    obj.meta_mut().generation = Some(generation);
    obj
}

fn assert_health(kind: &str, obj: &impl Serialize, status: &str, message: &str) {
    let (got_status, got_message) = health(kind, obj);
    assert_eq!(
        (got_status.as_str(), got_message.as_str()),
        (status, message),
        "{kind}: {}",
        serde_json::to_string(obj).unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------------------
// Dataset

fn dataset(status: Option<DatasetStatus>) -> Dataset {
    let mut d: Dataset = example("examples/quickstart/dataset.yaml");
    d.status = status;
    at_generation(d, 2)
}

#[test]
fn dataset_health() {
    assert_health(
        "Dataset",
        &dataset(None),
        "Progressing",
        "Waiting for the tailor operator to report status",
    );
    assert_health(
        "Dataset",
        &dataset(Some(DatasetStatus {
            phase: DatasetPhase::Preparing,
            observed_generation: Some(2),
            conditions: vec![cond(
                PROGRESSING,
                true,
                "Preparing",
                "prepare Job support-chat-prepare-1 running",
                2,
            )],
            ..Default::default()
        })),
        "Progressing",
        "prepare Job support-chat-prepare-1 running",
    );
    assert_health(
        "Dataset",
        &dataset(Some(DatasetStatus {
            phase: DatasetPhase::Ready,
            observed_generation: Some(2),
            conditions: vec![cond(READY, true, "Prepared", "prepared", 2)],
            stats: Some(DatasetStats {
                examples: 240,
                train: 216,
                validation: 24,
                ..Default::default()
            }),
            ..Default::default()
        })),
        "Healthy",
        "240 examples prepared (train 216, validation 24, test 0)",
    );
    assert_health(
        "Dataset",
        &dataset(Some(DatasetStatus {
            phase: DatasetPhase::Failed,
            observed_generation: Some(2),
            conditions: vec![cond(
                READY,
                false,
                "TooFewExamples",
                "only 12 valid examples, minExamples is 100",
                2,
            )],
            ..Default::default()
        })),
        "Degraded",
        "only 12 valid examples, minExamples is 100",
    );
    // A Ready status written for generation 1 says nothing about the spec of generation 2.
    assert_health(
        "Dataset",
        &dataset(Some(DatasetStatus {
            phase: DatasetPhase::Ready,
            observed_generation: Some(1),
            conditions: vec![cond(READY, true, "Prepared", "prepared", 1)],
            ..Default::default()
        })),
        "Progressing",
        "Waiting for the tailor operator to observe generation 2",
    );
    // Status caught up but the Ready condition did not.
    assert_health(
        "Dataset",
        &dataset(Some(DatasetStatus {
            phase: DatasetPhase::Ready,
            observed_generation: Some(2),
            conditions: vec![cond(READY, true, "Prepared", "prepared", 1)],
            ..Default::default()
        })),
        "Progressing",
        "Waiting for the tailor operator to update the Ready condition to generation 2",
    );
}

// ---------------------------------------------------------------------------------------------
// FineTuneJob

fn job(suspend: bool, status: Option<FineTuneJobStatus>) -> FineTuneJob {
    let mut j: FineTuneJob = example("examples/quickstart/finetunejob.yaml");
    j.spec.suspend = suspend;
    j.status = status;
    at_generation(j, 1)
}

#[test]
fn finetunejob_health() {
    assert_health(
        "FineTuneJob",
        &job(
            false,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Running,
                observed_generation: Some(1),
                progress: Some(Progress {
                    epoch: 1.5,
                    step: 40,
                    total_steps: 90,
                    train_loss: Some(1.23456),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        "Progressing",
        "Training: step 40/90, train loss 1.2346",
    );
    assert_health(
        "FineTuneJob",
        &job(
            false,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Queued,
                observed_generation: Some(1),
                conditions: vec![cond(
                    SCHEDULED,
                    false,
                    "Unschedulable",
                    "0/3 nodes have 1 free nvidia.com/gpu",
                    1,
                )],
                ..Default::default()
            }),
        ),
        "Progressing",
        "0/3 nodes have 1 free nvidia.com/gpu",
    );
    assert_health(
        "FineTuneJob",
        &job(
            true,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Queued,
                observed_generation: Some(1),
                ..Default::default()
            }),
        ),
        "Suspended",
        "Suspended (spec.suspend is true)",
    );
    assert_health(
        "FineTuneJob",
        &job(
            false,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Succeeded,
                observed_generation: Some(1),
                conditions: vec![cond(READY, true, "Succeeded", "adapter recorded", 1)],
                adapter_ref: Some(LocalRef {
                    name: "support-v1".into(),
                }),
                validation_loss: Some(0.8123),
                base_validation_loss: Some(2.5),
                ..Default::default()
            }),
        ),
        "Healthy",
        "Trained adapter support-v1: validation loss 0.8123 (base model 2.5000)",
    );
    // Evaluated: the judge's win rate too; evaluating is progress.
    let evaluation: tailor_wire::eval::Evaluation = serde_json::from_value(json!({
        "examples": 20, "answered": 20, "base": {}, "adapter": {},
        "judge": {"model": "big", "pairs": 20, "judged": 19, "unjudged": 1, "wins": 15, "ties": 2,
                  "losses": 2, "winRate": 0.7894, "winsAsA": 8, "winsAsB": 7, "requests": 40,
                  "retries": 0, "failures": 1},
        "decoding": {}, "seconds": 3.5
    }))
    .expect("evaluation");
    assert_health(
        "FineTuneJob",
        &job(
            false,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Succeeded,
                observed_generation: Some(1),
                conditions: vec![cond(READY, true, "Succeeded", "adapter recorded", 1)],
                adapter_ref: Some(LocalRef {
                    name: "support-v1".into(),
                }),
                validation_loss: Some(0.8123),
                evaluation: Some(evaluation),
                ..Default::default()
            }),
        ),
        "Healthy",
        "Trained adapter support-v1: validation loss 0.8123; win rate 0.79 over 19 judged pairs",
    );
    assert_health(
        "FineTuneJob",
        &job(
            false,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Evaluating,
                observed_generation: Some(1),
                conditions: vec![cond(
                    PROGRESSING,
                    true,
                    "Evaluating",
                    "evaluating it against the base model on the test split",
                    1,
                )],
                ..Default::default()
            }),
        ),
        "Progressing",
        "evaluating it against the base model on the test split",
    );
    assert_health(
        "FineTuneJob",
        &job(
            false,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Failed,
                observed_generation: Some(1),
                conditions: vec![cond(
                    READY,
                    false,
                    "TrainingFailed",
                    "trainer exited 1 after 4 attempts: loss is NaN",
                    1,
                )],
                ..Default::default()
            }),
        ),
        "Degraded",
        "trainer exited 1 after 4 attempts: loss is NaN",
    );
    // Suspended only parks a job that has not finished: a finished one keeps its outcome.
    assert_health(
        "FineTuneJob",
        &job(
            true,
            Some(FineTuneJobStatus {
                phase: FineTuneJobPhase::Succeeded,
                observed_generation: Some(1),
                conditions: vec![cond(READY, true, "Succeeded", "adapter recorded", 1)],
                ..Default::default()
            }),
        ),
        "Healthy",
        "adapter recorded",
    );
    let mut stale = job(
        false,
        Some(FineTuneJobStatus {
            phase: FineTuneJobPhase::Succeeded,
            observed_generation: Some(1),
            ..Default::default()
        }),
    );
    stale.metadata.generation = Some(3);
    assert_health(
        "FineTuneJob",
        &stale,
        "Progressing",
        "Waiting for the tailor operator to observe generation 3",
    );
}

// ---------------------------------------------------------------------------------------------
// LoraAdapter

fn adapter(status: Option<LoraAdapterStatus>) -> LoraAdapter {
    let mut a: LoraAdapter = example("examples/imported-adapter.yaml");
    a.status = status;
    at_generation(a, 1)
}

#[test]
fn loraadapter_health() {
    assert_health(
        "LoraAdapter",
        &adapter(Some(LoraAdapterStatus {
            phase: LoraAdapterPhase::Pending,
            observed_generation: Some(1),
            conditions: vec![cond(
                READY,
                false,
                "Verifying",
                "checking sha256 of adapter_model.safetensors",
                1,
            )],
            ..Default::default()
        })),
        "Progressing",
        "checking sha256 of adapter_model.safetensors",
    );
    assert_health(
        "LoraAdapter",
        &adapter(Some(LoraAdapterStatus {
            phase: LoraAdapterPhase::Ready,
            observed_generation: Some(1),
            conditions: vec![cond(
                READY,
                true,
                "Verified",
                "rank 8 adapter for q_proj, v_proj; sha256 matches",
                1,
            )],
            ..Default::default()
        })),
        "Healthy",
        "rank 8 adapter for q_proj, v_proj; sha256 matches",
    );
    assert_health(
        "LoraAdapter",
        &adapter(Some(LoraAdapterStatus {
            phase: LoraAdapterPhase::Failed,
            observed_generation: Some(1),
            conditions: vec![cond(
                READY,
                false,
                "VerificationFailed",
                "adapter_config.json: r is 16, spec.rank is 8",
                1,
            )],
            ..Default::default()
        })),
        "Degraded",
        "adapter_config.json: r is 16, spec.rank is 8",
    );
    // No message anywhere: the reason still says something.
    assert_health(
        "LoraAdapter",
        &adapter(Some(LoraAdapterStatus {
            phase: LoraAdapterPhase::Failed,
            observed_generation: Some(1),
            conditions: vec![cond(READY, false, "ArtifactNotFound", "", 1)],
            ..Default::default()
        })),
        "Degraded",
        "ArtifactNotFound",
    );
}

// ---------------------------------------------------------------------------------------------
// ModelDeployment

fn deployment(status: ModelDeploymentStatus) -> ModelDeployment {
    let mut d: ModelDeployment = example("examples/quickstart/modeldeployment.yaml");
    d.status = Some(status);
    at_generation(d, 4)
}

#[test]
fn modeldeployment_health() {
    assert_health(
        "ModelDeployment",
        &deployment(ModelDeploymentStatus {
            phase: ModelDeploymentPhase::Healthy,
            observed_generation: Some(4),
            conditions: vec![cond(READY, true, "Serving", "2/2 pods ready", 4)],
            stable_revision: Some("7c9f2a1b".into()),
            endpoint: Some("http://support-router.tailor-demo.svc:8080/v1".into()),
            ..Default::default()
        }),
        "Healthy",
        "Serving revision 7c9f2a1b at http://support-router.tailor-demo.svc:8080/v1",
    );
    assert_health(
        "ModelDeployment",
        &deployment(ModelDeploymentStatus {
            phase: ModelDeploymentPhase::Progressing,
            observed_generation: Some(4),
            conditions: vec![
                cond(READY, true, "Serving", "stable serves", 4),
                cond(PROGRESSING, true, "CanaryStep", "step 2", 4),
            ],
            stable_revision: Some("7c9f2a1b".into()),
            canary_revision: Some("e41d0c33".into()),
            canary_weight: 50,
            current_step: Some(1),
            ..Default::default()
        }),
        "Progressing",
        "Canary e41d0c33 at 50% (step 2 of 2)",
    );
    assert_health(
        "ModelDeployment",
        &deployment(ModelDeploymentStatus {
            phase: ModelDeploymentPhase::Paused,
            observed_generation: Some(4),
            conditions: vec![cond(
                PROGRESSING,
                false,
                "AnalysisFailed",
                "canary error rate 9.0% > maxErrorRate 5.0%; autoRollback is off",
                4,
            )],
            canary_revision: Some("e41d0c33".into()),
            canary_weight: 10,
            ..Default::default()
        }),
        "Suspended",
        "Canary paused: canary error rate 9.0% > maxErrorRate 5.0%; autoRollback is off",
    );
    assert_health(
        "ModelDeployment",
        &deployment(ModelDeploymentStatus {
            phase: ModelDeploymentPhase::RolledBack,
            observed_generation: Some(4),
            conditions: vec![
                cond(READY, true, "Serving", "stable serves", 4),
                cond(
                    ROLLED_BACK,
                    true,
                    "AnalysisFailed",
                    "revision e41d0c33: canary error rate 30.0% (60/200) > maxErrorRate 5.0% in 2 windows",
                    4,
                ),
            ],
            stable_revision: Some("7c9f2a1b".into()),
            ..Default::default()
        }),
        "Degraded",
        "Canary rolled back: revision e41d0c33: canary error rate 30.0% (60/200) > maxErrorRate 5.0% in 2 windows",
    );
    // Without the condition the newest history record carries the reason.
    assert_health(
        "ModelDeployment",
        &deployment(ModelDeploymentStatus {
            phase: ModelDeploymentPhase::RolledBack,
            observed_generation: Some(4),
            history: vec![
                RevisionRecord {
                    revision: "7c9f2a1b".into(),
                    kind: RolloutKind::Adapter,
                    outcome: Outcome::Promoted,
                    reason: "all steps passed".into(),
                    time: None,
                },
                RevisionRecord {
                    revision: "5a5a5a5a".into(),
                    kind: RolloutKind::Pod,
                    outcome: Outcome::RolledBack,
                    reason: "pods not ready within 600s".into(),
                    time: None,
                },
            ],
            ..Default::default()
        }),
        "Degraded",
        "Canary rolled back: revision 5a5a5a5a: pods not ready within 600s",
    );
    assert_health(
        "ModelDeployment",
        &deployment(ModelDeploymentStatus {
            phase: ModelDeploymentPhase::Degraded,
            observed_generation: Some(4),
            conditions: vec![cond(
                DEGRADED,
                true,
                "AdapterLoadFailed",
                "support-v2 failed to load on 1/2 pods",
                4,
            )],
            ..Default::default()
        }),
        "Degraded",
        "support-v2 failed to load on 1/2 pods",
    );
    assert_health(
        "ModelDeployment",
        &deployment(ModelDeploymentStatus {
            phase: ModelDeploymentPhase::Healthy,
            observed_generation: Some(3),
            stable_revision: Some("7c9f2a1b".into()),
            ..Default::default()
        }),
        "Progressing",
        "Waiting for the tailor operator to observe generation 4",
    );
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// The argocd-cm patch as it must read: every script verbatim under its Argo CD key.
fn rendered_patch() -> String {
    let mut out = String::from(
        "# Argo CD health checks for tailor's kinds. Generated from health/*.lua by\n\
         # `TAILOR_BLESS=1 cargo test -p tailor-api --test argocd`; edit the .lua files, not this.\n\
         #\n\
         #   kubectl -n argocd patch configmap argocd-cm --patch-file manifests/argocd/argocd-cm-patch.yaml\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: argocd-cm\n  namespace: argocd\n\
         data:\n",
    );
    for kind in KINDS {
        let script = std::fs::read_to_string(script_path(kind)).expect("health script");
        out.push_str(&format!(
            "  resource.customizations.health.tailor.dev_{kind}: |\n"
        ));
        for line in script.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[test]
fn configmap_patch_carries_every_script_verbatim() {
    let path = argocd_dir().join("argocd-cm-patch.yaml");
    let want = rendered_patch();
    if std::env::var_os("TAILOR_BLESS").is_some() {
        std::fs::write(&path, &want).expect("write patch");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date: run TAILOR_BLESS=1 cargo test -p tailor-api --test argocd",
        path.display()
    );
    // And a YAML parser reads back exactly the scripts.
    let docs = common::yaml_docs(&path);
    assert_eq!(docs.len(), 1);
    let cm = &docs[0];
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let data = cm["data"].as_object().expect("data");
    assert_eq!(data.len(), KINDS.len());
    for kind in KINDS {
        let script = std::fs::read_to_string(script_path(kind)).expect("health script");
        assert_eq!(
            data[&format!("resource.customizations.health.tailor.dev_{kind}")],
            Value::String(script),
            "{kind}"
        );
    }
}

#[test]
fn scripts_stay_within_lua_5_1() {
    // Argo CD runs gopher-lua (Lua 5.1). Lua 5.4 here would accept newer syntax that Argo CD
    // rejects, so forbid what 5.2+ added and the sandbox lacks.
    for kind in KINDS {
        let script = std::fs::read_to_string(script_path(kind)).expect("health script");
        for (n, line) in script.lines().enumerate() {
            let code = line.split("--").next().unwrap_or_default();
            for bad in [
                "//", "goto ", "<const>", "<close>", "os.", "io.", "require", "utf8.",
            ] {
                assert!(
                    !code.contains(bad),
                    "{kind}.lua:{}: `{bad}` is not available to Argo CD health checks",
                    n + 1
                );
            }
            for op in [" & ", " | ", " ~ ", "<<", ">>"] {
                assert!(
                    !code.contains(op),
                    "{kind}.lua:{}: bitwise operators need Lua 5.3",
                    n + 1
                );
            }
        }
    }
}

#[test]
fn applications_point_at_paths_in_this_repository() {
    let docs = common::yaml_docs(&argocd_dir().join("application.yaml"));
    let paths: Vec<&str> = docs
        .iter()
        .map(|app| {
            assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
            assert_eq!(app["kind"], "Application");
            assert!(app["spec"]["destination"]["namespace"].is_string());
            app["spec"]["source"]["path"].as_str().expect("source.path")
        })
        .collect();
    assert!(paths.contains(&"examples/quickstart"), "{paths:?}");
    for path in paths {
        assert!(
            common::repo_root()
                .join(path)
                .join("kustomization.yaml")
                .is_file(),
            "{path} has no kustomization.yaml"
        );
    }
    // The quickstart's namespace matches the one its kustomization sets.
    let quickstart = docs
        .iter()
        .find(|a| a["spec"]["source"]["path"] == "examples/quickstart")
        .expect("quickstart app");
    let kustomization =
        common::yaml_docs(&common::repo_root().join("examples/quickstart/kustomization.yaml"));
    assert_eq!(
        quickstart["spec"]["destination"]["namespace"],
        kustomization[0]["namespace"]
    );
}
