//! issue 6's "Done when" list, end to end: one cluster per test process (tailor-sim unless
//! `TAILOR_E2E_KUBECONFIG` is set), one namespace per test.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tailor_e2e::{
    FineTuneJob, Scenario, condition, describe, phase, quickstart_examples, repo_root, wait_for,
};

const LONG: Duration = Duration::from_secs(300);
const SHORT: Duration = Duration::from_secs(90);

fn sha256_hex(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(
        std::fs::read(path).expect("artifact readable"),
    ))
}

/// Expected preparation counts of the quickstart file, computed independently.
fn quickstart_counts() -> (u64, u64, u64) {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart/support-chat.jsonl"))
        .expect("quickstart data");
    let mut invalid = 0;
    let mut seen = BTreeSet::new();
    let mut dups = 0;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        if !tailor_e2e::is_valid_chat(l) {
            invalid += 1;
        } else if !seen.insert(
            serde_json::from_str::<Value>(l)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ) {
            dups += 1;
        }
    }
    (seen.len() as u64, invalid, dups)
}

#[test]
fn quickstart_trains_records_a_verified_adapter_that_outlives_its_job() {
    let s = Scenario::new("tailor-demo");
    let (env, ns) = (s.env, s.ns());
    // The operator runs as its Deployment's pod, with its ServiceAccount.
    let op = env.ready_operator_pod();
    assert_eq!(op["spec"]["serviceAccountName"], "tailor-operator");

    env.kubectl(&[
        "apply",
        "-k",
        &repo_root().join("tests/e2e/quickstart").to_string_lossy(),
    ])
    .expect("kubectl apply -k tests/e2e/quickstart (the quickstart, short run)");

    let ds = s.wait_phase("dataset", "support-chat", "Ready", LONG);
    let (examples, invalid, dups) = quickstart_counts();
    let stats = &ds["status"]["stats"];
    assert_eq!(stats["examples"], examples, "{stats}");
    assert_eq!(stats["invalid"], invalid, "{stats}");
    assert_eq!(stats["duplicatesRemoved"], dups, "{stats}");
    assert!(
        stats["redactions"].as_u64().unwrap_or(0) >= 2,
        "emails and a phone number: {stats}"
    );
    assert_eq!(
        stats["train"].as_u64().unwrap_or(0) + stats["validation"].as_u64().unwrap_or(0),
        examples
    );
    assert_eq!(
        ds["status"]["invalidSamples"].as_array().map(Vec::len),
        Some(invalid as usize)
    );
    assert!(condition(&ds, "Ready").is_some_and(|c| c["status"] == "True"));
    let prepared = ds["status"]["preparedUri"]
        .as_str()
        .expect("preparedUri")
        .to_string();
    if let Some(dir) = s.artifact_path(&prepared) {
        let train = std::fs::read_to_string(dir.join("train.jsonl")).expect("train split");
        assert!(
            train.contains("[EMAIL]") || train.contains("[PHONE]"),
            "redacted data"
        );
        assert!(
            !train.contains("@example.com"),
            "no email left in the prepared data"
        );
    }

    // Running, with progress that advances, then Succeeded.
    let mut steps = BTreeSet::new();
    s.wait_for(
        "FineTuneJob support-v1 to report advancing progress while Running",
        LONG,
        || {
            let f = env.object(ns, "finetunejob", "support-v1")?;
            if phase(&f) == "Running"
                && let Some(s) = f["status"]["progress"]["step"].as_u64()
            {
                steps.insert(s);
            }
            if phase(&f) == "Succeeded" && steps.len() < 2 {
                panic!("Succeeded after observing progress steps {steps:?} only");
            }
            (steps.len() >= 2).then_some(())
        },
    );
    let ftj = s.wait_phase("finetunejob", "support-v1", "Succeeded", LONG);
    let st = &ftj["status"];
    assert!(st["validationLoss"].as_f64().is_some(), "{st}");
    assert!(st["baseValidationLoss"].as_f64().is_some(), "{st}");
    assert_eq!(st["adapterRef"]["name"], "support-v1");
    assert_eq!(st["datasetContentHash"], ds["status"]["contentHash"]);
    assert!(condition(&ftj, "Ready").is_some_and(|c| c["status"] == "True"));

    let la = s.wait_phase("loraadapter", "support-v1", "Ready", SHORT);
    let spec = &la["spec"];
    assert_eq!(spec["sourceJob"], "support-v1");
    assert_eq!(spec["rank"], 8);
    assert!(
        la["metadata"]["ownerReferences"].is_null(),
        "not owned by the job"
    );
    let lineage = &la["status"]["lineage"];
    assert_eq!(lineage["datasetContentHash"], ds["status"]["contentHash"]);
    assert_eq!(lineage["validationLoss"], st["validationLoss"]);
    assert!(lineage["hyperparameters"]["epochs"].is_number());
    let uri = spec["uri"].as_str().expect("uri");
    if let (Some(dir), Some(base)) = (
        s.artifact_path(uri),
        s.artifact_path("pvc://tailor-artifacts/models/base"),
    ) {
        let file = dir.join("adapter_model.safetensors");
        assert_eq!(spec["sha256"].as_str(), Some(sha256_hex(&file).as_str()));
        assert_eq!(
            spec["sizeBytes"].as_u64(),
            std::fs::metadata(&file).ok().map(|m| m.len())
        );
        let out = std::process::Command::new("python3")
            .arg(repo_root().join("tests/e2e/tests/peft_check.py"))
            .arg(&base)
            .arg(&dir)
            .output()
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "PEFT load: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("json");
        assert_eq!(
            r["changed"], true,
            "a trained adapter changes the logits: {r}"
        );
    }

    // Deleting the job removes its Jobs and pods but keeps the adapter.
    env.kubectl(&[
        "-n",
        ns,
        "delete",
        "finetunejob",
        "support-v1",
        "--wait=true",
    ])
    .expect("delete");
    s.wait_for(
        "the train Jobs and pods to be garbage-collected",
        SHORT,
        || {
            let jobs = env
                .get_json(&[
                    "-n",
                    ns,
                    "get",
                    "jobs",
                    "-l",
                    "tailor.dev/finetunejob=support-v1",
                ])
                .ok()?;
            let pods = env
                .get_json(&[
                    "-n",
                    ns,
                    "get",
                    "pods",
                    "-l",
                    "tailor.dev/finetunejob=support-v1",
                ])
                .ok()?;
            (jobs["items"].as_array()?.is_empty() && pods["items"].as_array()?.is_empty())
                .then_some(())
        },
    );
    let la = env
        .object(ns, "loraadapter", "support-v1")
        .expect("adapter kept");
    assert_eq!(phase(&la), "Ready");
}

#[test]
fn job_waits_for_a_missing_dataset_and_proceeds_when_it_appears() {
    let s = Scenario::new("e2e-late-dataset");
    let (env, ns) = (s.env, s.ns());
    s.job(&FineTuneJob::new("late", "arrives-later"));
    let f = s.wait_for("the job to wait for its Dataset", SHORT, || {
        let f = env.object(ns, "finetunejob", "late")?;
        let c = condition(&f, "DatasetReady")?;
        (phase(&f) == "ValidatingData"
            && c["status"] == "False"
            && c["reason"] == "DatasetNotFound")
            .then_some(f)
    });
    assert!(condition(&f, "Ready").is_some_and(|c| c["status"] == "False"));
    s.quickstart_dataset("arrives-later", 24);
    let f = s.wait_phase("finetunejob", "late", "Succeeded", LONG);
    assert!(condition(&f, "DatasetReady").is_some_and(|c| c["status"] == "True"));
    s.wait_phase("loraadapter", "late", "Ready", SHORT);
}

#[test]
fn dataset_with_forty_percent_malformed_lines_reports_them() {
    let s = Scenario::new("e2e-malformed");
    let good: Vec<String> = quickstart_examples().into_iter().take(30).collect();
    let mut lines = vec![];
    for (i, g) in good.iter().enumerate() {
        lines.push(g.clone());
        if i % 3 != 2 {
            lines.push(match i % 2 {
                0 => {
                    format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"truncated {i}\"")
                }
                _ => format!("{{\"prompt\": \"wrong format {i}\"}}"),
            });
        }
    }
    let malformed = lines.len() - good.len();
    assert_eq!(malformed * 10, lines.len() * 4, "40% malformed");
    s.dataset("noisy", &lines);
    let ds = s.wait_phase("dataset", "noisy", "Ready", LONG);
    assert_eq!(ds["status"]["stats"]["invalid"], malformed as u64);
    assert_eq!(ds["status"]["stats"]["examples"], good.len() as u64);
    let samples = ds["status"]["invalidSamples"].as_array().expect("samples");
    assert!(!samples.is_empty());
    assert_eq!(
        samples[0]["line"], 2,
        "line numbers are 1-based lines of the source"
    );
    assert!(samples[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));

    // Too few valid examples for minExamples: Failed, saying so.
    s.dataset_min("too-noisy", &lines, 40);
    let ds = s.wait_phase("dataset", "too-noisy", "Failed", LONG);
    let ready = condition(&ds, "Ready").expect("Ready condition");
    assert_eq!(ready["status"], "False");
    let msg = ready["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("30") && msg.contains("40"),
        "message names the counts: {msg}"
    );
}

#[test]
fn too_many_gpus_queue_with_the_schedulers_reason_until_lowered() {
    let s = Scenario::new("e2e-gpus");
    let (env, ns) = (s.env, s.ns());
    s.quickstart_dataset("data", 24);
    s.job(&FineTuneJob::new("big", "data").gpus(16));
    let f = s.wait_for("the job to be Queued as unschedulable", LONG, || {
        let f = env.object(ns, "finetunejob", "big")?;
        let c = condition(&f, "Scheduled")?;
        (phase(&f) == "Queued" && c["status"] == "False" && c["reason"] == "Unschedulable")
            .then_some(f)
    });
    let msg = condition(&f, "Scheduled")
        .and_then(|c| c["message"].as_str())
        .unwrap_or("");
    assert!(
        msg.contains("nvidia.com/gpu"),
        "the scheduler's message: {msg}"
    );
    env.kubectl(&[
        "-n",
        ns,
        "patch",
        "finetunejob",
        "big",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"resources":{"gpus":1}}}"#,
    ])
    .expect("lower the request");
    let f = s.wait_phase("finetunejob", "big", "Succeeded", LONG);
    assert!(condition(&f, "Scheduled").is_some_and(|c| c["status"] == "True"));
    let jobs = env
        .get_json(&["-n", ns, "get", "jobs", "-l", "tailor.dev/finetunejob=big"])
        .expect("jobs");
    assert_eq!(
        jobs["items"].as_array().map(Vec::len),
        Some(1),
        "the unschedulable Job was replaced"
    );
}

#[test]
fn invalid_specs_are_rejected_at_admission() {
    let s = Scenario::new("e2e-invalid");
    let (env, ns) = (s.env, s.ns());
    let bad_module = FineTuneJob::new("bad", "data").target_modules(&["q_proj", "attention"]);
    let err = s.apply(&bad_module.yaml(ns)).expect_err("rejected");
    assert!(err.to_string().contains("targetModules"), "{err}");
    let two_sources = "apiVersion: tailor.dev/v1alpha1\nkind: Dataset\nmetadata:\n  name: two\n  namespace: e2e-invalid\nspec:\n  source:\n    inline: \"{}\"\n    uri: pvc://tailor-artifacts/x.jsonl\n";
    let err = env.apply(two_sources).expect_err("rejected");
    assert!(err.to_string().contains("exactly one of"), "{err}");
    assert!(env.object(ns, "dataset", "two").is_none());
}

#[test]
fn deleted_trainer_pod_resumes_from_its_checkpoint() {
    let s = Scenario::new("e2e-resume");
    let (env, ns) = (s.env, s.ns());
    s.quickstart_dataset("data", 60);
    s.job(&FineTuneJob::new("resume", "data").epochs(8));
    let f = s.wait_for("a checkpoint while Running", LONG, || {
        let f = env.object(ns, "finetunejob", "resume")?;
        (phase(&f) == "Running" && f["status"]["lastCheckpoint"]["step"].as_u64().unwrap_or(0) >= 5)
            .then_some(f)
    });
    let job_name = f["status"]["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    env.kubectl(&[
        "-n",
        ns,
        "delete",
        "pods",
        "-l",
        "tailor.dev/finetunejob=resume",
        "--wait=false",
    ])
    .expect("delete trainer pod");
    let f = s.wait_phase("finetunejob", "resume", "Succeeded", LONG);
    assert!(
        f["status"]["attempts"].as_u64().unwrap_or(0) >= 2,
        "{}",
        f["status"]
    );
    assert_eq!(f["status"]["jobName"], job_name.as_str());
    let la = s.wait_phase("loraadapter", "resume", "Ready", SHORT);
    if let Some(dir) = la["spec"]["uri"].as_str().and_then(|u| s.artifact_path(u)) {
        let metrics: Value =
            serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).expect("metrics.json"))
                .expect("json");
        assert!(
            metrics["resumedFromStep"].as_u64().unwrap_or(0) >= 5,
            "resumed: {metrics}"
        );
    }
}

#[test]
fn operator_restart_mid_run_creates_no_duplicate_job() {
    let s = Scenario::new("e2e-restart");
    let (env, ns) = (s.env, s.ns());
    s.quickstart_dataset("data", 60);
    s.job(&FineTuneJob::new("survivor", "data").epochs(6));
    let f = s.wait_phase("finetunejob", "survivor", "Running", LONG);
    let job_name = f["status"]["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    let old = env.ready_operator_pod();
    let old_name = old["metadata"]["name"].as_str().expect("name").to_string();
    env.kubectl(&[
        "-n",
        "tailor-system",
        "delete",
        "pod",
        &old_name,
        "--grace-period=0",
        "--force",
    ])
    .expect("kill the operator");
    wait_for(
        "a new operator pod",
        SHORT,
        || {
            env.operator_pod()
                .filter(|p| p["metadata"]["name"] != old_name.as_str() && tailor_e2e::is_ready(p))
        },
        describe(env, "tailor-system"),
    );
    let f = s.wait_phase("finetunejob", "survivor", "Succeeded", LONG);
    assert_eq!(
        f["status"]["jobName"],
        job_name.as_str(),
        "status continued"
    );
    let jobs = env
        .get_json(&[
            "-n",
            ns,
            "get",
            "jobs",
            "-l",
            "tailor.dev/finetunejob=survivor",
        ])
        .expect("jobs");
    assert_eq!(
        jobs["items"].as_array().map(Vec::len),
        Some(1),
        "no duplicate Job"
    );
    s.wait_phase("loraadapter", "survivor", "Ready", SHORT);
}

#[test]
fn spec_change_mid_run_cancels_the_attempt_and_trains_the_new_spec() {
    let s = Scenario::new("e2e-respec");
    let (env, ns) = (s.env, s.ns());
    s.quickstart_dataset("data", 60);
    s.job(&FineTuneJob::new("respec", "data").epochs(8));
    let f = s.wait_for("a checkpoint while Running", LONG, || {
        let f = env.object(ns, "finetunejob", "respec")?;
        (phase(&f) == "Running" && f["status"]["lastCheckpoint"]["step"].as_u64().unwrap_or(0) >= 5)
            .then_some(f)
    });
    let old_job = f["status"]["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    let old_checkpoint = f["status"]["lastCheckpoint"]["uri"]
        .as_str()
        .expect("checkpoint uri")
        .to_string();
    env.kubectl(&[
        "-n",
        ns,
        "patch",
        "finetunejob",
        "respec",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"hyperparameters":{"epochs":2}}}"#,
    ])
    .expect("change the spec mid-run");
    let f = s.wait_phase("finetunejob", "respec", "Succeeded", LONG);
    let st = &f["status"];
    assert_eq!(
        st["observedGeneration"], f["metadata"]["generation"],
        "{st}"
    );
    let new_job = st["jobName"].as_str().expect("jobName");
    assert_ne!(new_job, old_job, "a new run for the new spec: {st}");
    // The old attempt is gone; only the new run's Job is left.
    let jobs = env
        .get_json(&[
            "-n",
            ns,
            "get",
            "jobs",
            "-l",
            "tailor.dev/finetunejob=respec",
        ])
        .expect("jobs");
    let names: Vec<&str> = jobs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|j| j["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, vec![new_job]);
    // Why, as an Event on the FineTuneJob naming the cancelled Job.
    let events = env.get_json(&["-n", ns, "get", "events"]).expect("events");
    let why = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["reason"] == "SpecChanged" && e["involvedObject"]["name"] == "respec")
        .unwrap_or_else(|| panic!("a SpecChanged event: {events}"));
    assert!(
        why["message"].as_str().unwrap_or("").contains(&old_job),
        "{why}"
    );
    // The new run started from scratch, in outputs of its own.
    let la = s.wait_phase("loraadapter", "respec", "Ready", SHORT);
    let uri = la["spec"]["uri"].as_str().expect("uri");
    assert!(
        !old_checkpoint.starts_with(uri),
        "{uri} vs {old_checkpoint}"
    );
    if let Some(dir) = s.artifact_path(uri) {
        let metrics: Value =
            serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).expect("metrics.json"))
                .expect("json");
        assert!(metrics["resumedFromStep"].is_null(), "fresh run: {metrics}");
        assert_eq!(metrics["epochs"], 2, "{metrics}");
    }
}

/// Kueue (issue 12): a job naming a queue is created suspended and says it waits for
/// admission; the operator leaves `suspend` to Kueue. The test acts as Kueue and admits it.
#[test]
fn a_queued_job_waits_for_kueue_admission_then_runs_to_success() {
    let s = Scenario::new("e2e-kueue");
    s.quickstart_dataset("data", 24);
    let yaml = FineTuneJob::new("queued", "data").yaml(s.ns()).replace(
        "metadata:\n",
        "metadata:\n  labels: {kueue.x-k8s.io/queue-name: team-a}\n",
    );
    s.apply(&yaml).expect("apply queued FineTuneJob");
    let f = s.wait_for("the job to wait for Kueue admission", LONG, || {
        s.object("finetunejob", "queued").filter(|f| {
            condition(f, "Scheduled").is_some_and(|c| c["reason"] == "AwaitingAdmission")
        })
    });
    assert_eq!(phase(&f), "Queued", "{}", f["status"]);
    let ready = condition(&f, "Ready").expect("Ready");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("Kueue") && m.contains("team-a")),
        "{ready}"
    );
    let job_name = f["status"]["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    let job = s.get_json(&["job", &job_name]).expect("Job");
    assert_eq!(job["spec"]["suspend"], true);
    assert_eq!(
        job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"], "team-a",
        "Kueue finds the Job by its label"
    );
    // Left alone, it stays suspended: the operator does not admit it.
    std::thread::sleep(Duration::from_secs(5));
    let job = s.get_json(&["job", &job_name]).expect("Job");
    assert_eq!(job["spec"]["suspend"], true);
    let pods = s.get_json(&["pods"]).expect("pods");
    let of_job = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["ownerReferences"][0]["name"] == job_name.as_str())
        .count();
    assert_eq!(of_job, 0, "no pod before admission");

    // Kueue admits the workload.
    s.merge_patch("job", &job_name, r#"{"spec":{"suspend":false}}"#)
        .expect("admit");
    let done = s.wait_phase("finetunejob", "queued", "Succeeded", LONG);
    assert_eq!(
        done["status"]["jobName"],
        job_name.as_str(),
        "the same Job ran"
    );
}

/// Pod templates (issue 12): a registry secret, a service account, a toleration and a MIG
/// profile land in the trainer pod, which stays hardened; what would break the pod is refused
/// at admission.
#[test]
fn a_pod_template_and_a_mig_profile_land_in_the_trainer_pod() {
    let s = Scenario::new("e2e-template");
    let ns = s.ns();
    s.quickstart_dataset("data", 24);
    s.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: trainer, namespace: {ns}}}\n"
    ))
    .expect("service account");
    let with = |name: &str, template: &str| {
        FineTuneJob::new(name, "data").yaml(ns).replace(
            "resources: {gpus: 1}",
            "resources: {gpus: 1, gpuResource: nvidia.com/mig-1g.10gb}",
        ) + template
    };
    s.apply(&with(
        "mig",
        "  podTemplate:\n    labels: {team: ml}\n    imagePullSecrets: [{name: regcred}]\n    serviceAccountName: trainer\n    tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]\n    env: [{name: HF_HUB_OFFLINE, value: \"1\"}]\n",
    ))
    .expect("apply FineTuneJob with a pod template");
    // No simulated node has MIG slices: the pod stays Pending, and the status says on what.
    let f = s.wait_for("the MIG job to be unschedulable", LONG, || {
        s.object("finetunejob", "mig").filter(|f| {
            condition(f, "Scheduled").is_some_and(|c| {
                c["reason"] == "Unschedulable"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("nvidia.com/mig-1g.10gb"))
            })
        })
    });
    let job_name = f["status"]["jobName"].as_str().expect("jobName");
    let pods = s.get_json(&["pods"]).expect("pods");
    let pod = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["metadata"]["ownerReferences"][0]["name"] == job_name)
        .expect("the trainer pod");
    let spec = &pod["spec"];
    assert_eq!(pod["metadata"]["labels"]["team"], "ml");
    assert_eq!(spec["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(spec["serviceAccountName"], "trainer");
    assert!(
        spec["tolerations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["key"] == "dedicated")),
        "{spec}"
    );
    let c = &spec["containers"][0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/mig-1g.10gb"], "1");
    assert!(c["resources"]["limits"]["nvidia.com/gpu"].is_null());
    assert!(
        c["env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["name"] == "HF_HUB_OFFLINE")),
        "{c}"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);

    // What would break the pod is not a template field, or is the operator's.
    for (name, template, says) in [
        (
            "cmd",
            "  podTemplate:\n    command: [sh, -c, \"sleep 1\"]\n",
            "command",
        ),
        (
            "env",
            "  podTemplate:\n    env: [{name: POD_IP, value: 1.2.3.4}]\n",
            "POD_IP",
        ),
        (
            "mount",
            "  podTemplate:\n    volumes: [{name: x, emptyDir: {}}]\n    volumeMounts: [{name: x, mountPath: /artifacts}]\n",
            "/artifacts",
        ),
        (
            "vol",
            "  podTemplate:\n    volumes: [{name: config, emptyDir: {}}]\n",
            "config",
        ),
    ] {
        let err = s
            .apply(&with(name, template))
            .expect_err(&format!("{name} must be refused"));
        assert!(err.to_string().contains(says), "{name}: {err:#}");
    }
}
