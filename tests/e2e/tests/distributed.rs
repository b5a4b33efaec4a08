//! issue 13: training across nodes. A FineTuneJob with `resources.nodes: 2` runs as an Indexed
//! Job of two trainer pods, on two nodes, that find rank 0 under the run's headless Service and
//! train together: with `batchSize: b` per rank and no dropout they produce the adapter a
//! one-pod run with `batchSize: 2b` produces on the same data. Then one rank's pod is deleted
//! mid-run: the whole group restarts as new pods (the operator deletes the failed attempt's Job
//! and creates the next), resumes from the last checkpoint and succeeds.
//!
//! One test, its runs one after another: on tailor-sim pods share the host's network, and
//! two groups at once would both serve their rendezvous on port 29500.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tailor_e2e::{BASE_MODEL, Scenario, condition, phase};

const LONG: Duration = Duration::from_secs(420);
const INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// A small, deterministic run: no dropout, a fixed seed, no warmup, `nodes` pods of one rank
/// each with `batch` examples per rank.
fn job_yaml(ns: &str, name: &str, nodes: u32, batch: u32, epochs: u32) -> String {
    format!(
        "apiVersion: tailor.dev/v1alpha1\nkind: FineTuneJob\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  baseModel: {{uri: {BASE_MODEL}}}\n  datasetRef: {{name: data}}\n  lora: {{rank: 4, alpha: 8, dropout: 0, targetModules: [q_proj, v_proj]}}\n  hyperparameters: {{epochs: {epochs}, batchSize: {batch}, maxSeqLength: 128, learningRate: 0.001, warmupRatio: 0, seed: 7}}\n  resources: {{gpus: 1, nodes: {nodes}}}\n  checkpointEverySteps: 5\n  backoffLimit: 2\n"
    )
}

fn pods_of(s: &Scenario, job: &str) -> Vec<Value> {
    s.get_json(&["pods", "-l", &format!("tailor.dev/job={job}")])
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn index_of(pod: &Value) -> Option<String> {
    pod["metadata"]["labels"][INDEX].as_str().map(String::from)
}

/// The tensors of a safetensors file (F32, F16 or BF16), as f32.
fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header length")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, t) in header.as_object().expect("header object") {
        if name == "__metadata__" {
            continue;
        }
        let at = |i: usize| t["data_offsets"][i].as_u64().expect("offset") as usize;
        let raw = &data[at(0)..at(1)];
        let values: Vec<f32> = match t["dtype"].as_str() {
            Some("F32") => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            Some("BF16") => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            Some("F16") => raw
                .chunks_exact(2)
                .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            other => panic!("{name}: dtype {other:?}"),
        };
        out.insert(name.clone(), values);
    }
    out
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 => f32::INFINITY,
        _ => (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

fn adapter_dir(s: &Scenario, name: &str) -> Option<std::path::PathBuf> {
    let la = s.wait_phase("loraadapter", name, "Ready", LONG);
    la["spec"]["uri"].as_str().and_then(|u| s.artifact_path(u))
}

#[test]
fn two_nodes_train_the_adapter_of_one_and_a_lost_rank_restarts_the_group() {
    let s = Scenario::new("e2e-distributed");
    let ns = s.ns().to_string();
    s.quickstart_dataset("data", 40);
    s.wait_phase("dataset", "data", "Ready", LONG);

    // Two pods, batch 2 per rank.
    s.apply(&job_yaml(&ns, "pair", 2, 2, 2))
        .expect("apply FineTuneJob pair");
    let f = s.wait_for("the pair's Job", LONG, || {
        s.object("finetunejob", "pair")
            .filter(|f| f["status"]["jobName"].is_string())
    });
    let job = f["status"]["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    let group = s.wait_for("both ranks scheduled", LONG, || {
        let pods = pods_of(&s, &job);
        (pods.len() == 2 && pods.iter().all(|p| p["spec"]["nodeName"].is_string())).then_some(pods)
    });
    let mut nodes = vec![];
    for p in &group {
        let i = index_of(p).expect("an Indexed Job's pod");
        assert_eq!(p["spec"]["hostname"], format!("{job}-{i}"));
        assert_eq!(p["spec"]["subdomain"], job.as_str());
        nodes.push(
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 2, "one rank per node: {nodes:?}");
    let svc = s.get_json(&["service", &job]).expect("the group's Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "{svc}");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true, "{svc}");
    let f = s.wait_phase("finetunejob", "pair", "Succeeded", LONG);
    assert_eq!(f["status"]["attempts"], 1, "{}", f["status"]);
    // The group's endpoints named both ranks by hostname while they ran (rank 1 found rank 0
    // there); the Job is done, and so are its pods.
    let j = s.get_json(&["job", &job]).expect("the pair's Job");
    assert_eq!(j["spec"]["completionMode"], "Indexed");
    assert_eq!(j["status"]["succeeded"], 2, "{}", j["status"]);

    // One pod, batch 4: the same global batch.
    s.apply(&job_yaml(&ns, "single", 1, 4, 2))
        .expect("apply FineTuneJob single");
    s.wait_phase("finetunejob", "single", "Succeeded", LONG);
    if let (Some(pair), Some(single)) = (adapter_dir(&s, "pair"), adapter_dir(&s, "single")) {
        let a = tensors(&pair.join("adapter_model.safetensors"));
        let b = tensors(&single.join("adapter_model.safetensors"));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "the same tensors"
        );
        let mut worst = 0f32;
        let mut moved = 0f32;
        for (name, x) in &a {
            let y = &b[name];
            assert_eq!(x.len(), y.len(), "{name}");
            let diff = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-5, "{name}: max |pair - single| = {diff:e}");
            worst = worst.max(diff);
            if name.contains("lora_B") {
                moved = moved.max(x.iter().map(|v| v.abs()).fold(0f32, f32::max));
            }
        }
        assert!(moved > 0.0, "the adapters trained (lora_B left zero)");
        println!(
            "distributed: 2 pods x batch 2 = 1 pod x batch 4 over {} tensors, max abs diff {worst:e}",
            a.len()
        );
    }

    // A longer run; rank 1's pod is deleted once a checkpoint exists.
    s.apply(&job_yaml(&ns, "restart", 2, 2, 30))
        .expect("apply FineTuneJob restart");
    let f = s.wait_for("a checkpoint while the group runs", LONG, || {
        let f = s.object("finetunejob", "restart")?;
        (phase(&f) == "Running" && f["status"]["lastCheckpoint"]["step"].as_u64().unwrap_or(0) >= 5)
            .then_some(f)
    });
    let job = f["status"]["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    let first = pods_of(&s, &job);
    assert_eq!(first.len(), 2, "{first:?}");
    let uids: Vec<String> = first
        .iter()
        .filter_map(|p| p["metadata"]["uid"].as_str().map(String::from))
        .collect();
    let rank1 = first
        .iter()
        .find(|p| index_of(p).as_deref() == Some("1"))
        .and_then(|p| p["metadata"]["name"].as_str())
        .expect("rank 1's pod")
        .to_string();
    s.kubectl(&["delete", "pod", &rank1, "--wait=false"])
        .expect("delete rank 1's pod");
    let f = s.wait_phase("finetunejob", "restart", "Succeeded", LONG);
    let st = &f["status"];
    assert!(st["attempts"].as_u64().unwrap_or(0) >= 2, "{st}");
    assert_eq!(st["jobName"], job.as_str(), "the same run: {st}");
    let j = s.get_json(&["job", &job]).expect("the restart's Job");
    let attempt: u32 = j["metadata"]["annotations"]["tailor.dev/attempt"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    assert!(attempt >= 2, "a new Job for the next attempt: {j}");
    // Both ranks are new pods: the survivor of the first attempt did not stay on.
    let last = s
        .get_json(&["pods", "-l", &format!("tailor.dev/job={job}")])
        .expect("pods");
    let last: Vec<&Value> = last["items"].as_array().expect("items").iter().collect();
    assert_eq!(last.len(), 2, "{last:?}");
    for p in &last {
        let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
        assert!(!uids.iter().any(|u| u == uid), "an old rank stayed: {p}");
    }
    let restarted = s.events().into_iter().any(|e| {
        e["reason"] == "Restarting"
            && e["involvedObject"]["name"] == "restart"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("attempt 1"))
    });
    assert!(restarted, "a Restarting Event names the failed attempt");
    assert!(condition(&f, "Ready").is_some_and(|c| c["status"] == "True"));
    if let Some(dir) = adapter_dir(&s, "restart") {
        let metrics: Value =
            serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).expect("metrics.json"))
                .expect("json");
        assert!(
            metrics["resumedFromStep"].as_u64().unwrap_or(0) >= 5,
            "resumed from the checkpoint: {metrics}"
        );
        println!(
            "distributed: rank 1 deleted; the group restarted as attempt {attempt} from step {} of {}",
            metrics["resumedFromStep"], metrics["totalSteps"]
        );
    }
}
