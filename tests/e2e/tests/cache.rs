//! issue 11: the fetch cache. The operator of this cluster is installed with `fetchCache` a host
//! directory (`manifests/overlays/sim-cache`; tailor-sim's nodes share the machine, so it stands
//! for one node's disk). Two Datasets on the same node read the same bucket prefix: the second
//! prepare pod's fetch transfers nothing (linked from the namespace's cache directory); a Dataset
//! of another namespace reading the same prefix downloads it again, as each namespace sees only
//! its own directory of the cache (`subPath`).
//!
//! A hostPath volume is admitted only where the privileged Pod Security level applies, so the
//! namespaces here are labelled `privileged` (see docs/architecture.md, "Fetch cache").

use std::time::Duration;

use serde_json::Value;
use tailor_e2e::{Env, Scenario, quickstart_examples, upload};
use tailor_local_s3::LocalS3;

const LONG: Duration = Duration::from_secs(300);
const OVERLAY: &str = "manifests/overlays/sim-cache";
const S3_ADDR: &str = "127.0.0.1:18092";
const BUCKET: &str = "tailor-cache";

/// The fetch summary (`tailor-fetch`'s JSON on stdout) of a Dataset's prepare pod.
fn fetch_summary(s: &Scenario, dataset: &str) -> Value {
    let pods = s
        .get_json(&["pods", "-l", &format!("tailor.dev/dataset={dataset}")])
        .expect("pods");
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .expect("a prepare pod")
        .to_string();
    let log = s
        .kubectl(&["logs", &pod, "-c", "fetch-0"])
        .expect("fetch log");
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("fromCache").is_some())
        .unwrap_or_else(|| panic!("no fetch summary in {log}"))
}

fn dataset(s: &Scenario, name: &str, uri: &str) {
    s.apply(&format!(
        "apiVersion: tailor.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  source: {{uri: \"{uri}\", credentialsSecretRef: {{name: s3-creds}}}}\n  format: chat\n  preparation: {{minExamples: 10}}\n  podTemplate:\n    nodeSelector: {{kubernetes.io/hostname: sim-node-1}}\n",
        ns = s.ns()
    ))
    .expect("apply Dataset");
}

#[test]
fn a_second_fetch_on_the_node_comes_from_the_namespaces_cache() {
    let env = Env::get_with(OVERLAY);
    // `Scenario::new` below finds this cluster: one per process.
    if env.state_dir.is_none() {
        eprintln!("cache: needs tailor-sim; not applicable to TAILOR_E2E_KUBECONFIG");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let s3 = LocalS3::start_on(
        S3_ADDR.parse().expect("addr"),
        root.path(),
        "AKIATAILORCACHE00001",
        "e2e-cache-secret",
    )
    .expect("start s3s-fs");
    s3.create_bucket(BUCKET).expect("bucket");
    // A prefix of its own per run: the host directory outlives the test.
    let run = root
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let prefix = format!("s3://{BUCKET}/data/{run}/");
    let data = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = quickstart_examples().into_iter().take(30).collect();
    std::fs::write(data.path().join("part-1.jsonl"), lines.join("\n")).expect("write");
    upload(data.path(), &prefix, &s3.env());

    let scenario = |ns: &str| {
        // With its artifact claim (outputs go there without an artifact store), under the
        // privileged level (hostPath).
        let s = Scenario::new(ns);
        env.kubectl(&[
            "label",
            "namespace",
            ns,
            "pod-security.kubernetes.io/enforce=privileged",
            "--overwrite",
        ])
        .expect("label namespace");
        s.secret("s3-creds", &s3.env());
        s
    };
    let a = scenario("e2e-cache-a");
    dataset(&a, "first", &prefix);
    a.wait_phase("dataset", "first", "Ready", LONG);
    dataset(&a, "second", &prefix);
    a.wait_phase("dataset", "second", "Ready", LONG);
    let b = scenario("e2e-cache-b");
    dataset(&b, "other", &prefix);
    b.wait_phase("dataset", "other", "Ready", LONG);

    let first = fetch_summary(&a, "first");
    let second = fetch_summary(&a, "second");
    let other = fetch_summary(&b, "other");
    assert_eq!(first["fromCache"], false, "{first}");
    assert!(
        first["bytesTransferred"].as_u64().unwrap_or(0) > 0,
        "{first}"
    );
    assert_eq!(second["fromCache"], true, "{second}");
    assert_eq!(second["bytesTransferred"], 0, "{second}");
    assert_eq!(
        other["fromCache"], false,
        "another namespace's cache: {other}"
    );
    assert!(
        other["bytesTransferred"].as_u64().unwrap_or(0) > 0,
        "{other}"
    );
    println!(
        "cache: first fetch {} bytes, second on the node {} bytes (fromCache), other namespace {} bytes",
        first["bytesTransferred"], second["bytesTransferred"], other["bytesTransferred"]
    );
}
