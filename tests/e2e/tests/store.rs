//! issue 11: the operator-wide artifact store. The operator of this cluster is installed with
//! `artifactStore: s3://tailor-store/clusters/sim` (`manifests/overlays/sim-store`), and the
//! test namespace has no PersistentVolumeClaim at all: the quickstart — a Dataset prepared into
//! the bucket, a FineTuneJob training on a base model from the bucket with its checkpoints and
//! adapter written there, the LoraAdapter verified where it is stored, a ModelDeployment
//! answering the openai client — runs on the namespace's store Secret alone. The trainer pod is
//! deleted mid-run with its node cordoned: the next pod, on another node with an empty disk,
//! resumes from the newest checkpoint in the bucket.
//!
//! The bucket is served by `s3s-fs` (`tailor-local-s3`) on the loopback port the overlay's
//! `storeEndpointAllowList` names, so this test needs tailor-sim.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tailor_e2e::{
    BASE_MODEL, Env, FineTuneJob, ModelDeployment, Scenario, ask, binary, condition, phase, upload,
};
use tailor_local_s3::LocalS3;

const LONG: Duration = Duration::from_secs(300);
const OVERLAY: &str = "manifests/overlays/sim-store";
const BUCKET: &str = "tailor-store";
/// `storeEndpointAllowList` of the overlay.
const S3_ADDR: &str = "127.0.0.1:18091";
const ACCESS_KEY: &str = "AKIATAILORSTORE00001";
const SECRET_KEY: &str = "e2e-store-secret/VALUE+s7=";

fn node_of(s: &Scenario, pod: &str) -> String {
    s.get_json(&["pod", pod]).expect("pod")["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn trainer_pods(s: &Scenario, job: &str) -> Vec<Value> {
    s.get_json(&["pods", "-l", &format!("tailor.dev/finetunejob={job}")])
        .expect("pods")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_quickstart_runs_on_a_bucket_store_with_no_claim_and_resumes_on_another_node() {
    let env = Env::get_with(OVERLAY);
    if env.state_dir.is_none() {
        eprintln!(
            "store: needs tailor-sim (the test's S3 server listens on loopback); not applicable to TAILOR_E2E_KUBECONFIG"
        );
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let s3 = LocalS3::start_on(
        S3_ADDR.parse().expect("addr"),
        root.path(),
        ACCESS_KEY,
        SECRET_KEY,
    )
    .expect("start s3s-fs");
    s3.create_bucket(BUCKET).expect("bucket");
    // The platform's base model, in the bucket too.
    let base_uri = format!("s3://{BUCKET}/models/base");
    let base = env
        .artifact_path("tailor-system", BASE_MODEL)
        .expect("the suite's base model");
    upload(&base, &base_uri, &s3.env());

    let s = Scenario::without_claim(env, "e2e-store");
    // The namespace's store Secret (the platform team's, scoped to its area).
    s.secret("tailor-store", &s3.env());
    let area = format!("s3://{BUCKET}/clusters/sim/{}", s.ns());

    // Dataset: prepared into the bucket.
    s.quickstart_dataset("support", 60);
    let ds = s.wait_phase("dataset", "support", "Ready", LONG);
    let prepared = ds["status"]["preparedUri"].as_str().expect("preparedUri");
    assert!(
        prepared.starts_with(&format!("{area}/datasets/support/")),
        "{prepared}"
    );

    // FineTuneJob on the base model in the bucket; checkpoints and adapter go to the bucket.
    // Long enough (hundreds of steps) that the pod is still training when it is deleted.
    let yaml = FineTuneJob::new("support", "support")
        .epochs(40)
        .base_model(&base_uri)
        .yaml(s.ns())
        .replace(
            &format!("baseModel: {{uri: {base_uri}}}"),
            &format!(
                "baseModel: {{uri: \"{base_uri}\", credentialsSecretRef: {{name: tailor-store}}}}"
            ),
        );
    s.apply(&yaml).expect("apply FineTuneJob");
    let f = s.wait_for("a checkpoint in the bucket while Running", LONG, || {
        let f = s.object("finetunejob", "support")?;
        (phase(&f) == "Running" && f["status"]["lastCheckpoint"]["step"].as_u64().unwrap_or(0) >= 5)
            .then_some(f)
    });
    let checkpoint = f["status"]["lastCheckpoint"]["uri"].as_str().unwrap_or("");
    assert!(
        checkpoint.starts_with(&format!("{area}/finetune/")),
        "{}",
        f["status"]
    );
    // Cordon the trainer's node and delete its pod: the next one runs elsewhere, empty-handed.
    let first = trainer_pods(&s, "support");
    let first_pod = first[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let first_node = node_of(&s, &first_pod);
    env.kubectl(&["cordon", &first_node]).expect("cordon");
    s.kubectl(&["delete", "pod", &first_pod, "--wait=false"])
        .expect("delete trainer pod");
    let f = s.wait_phase("finetunejob", "support", "Succeeded", LONG);
    env.kubectl(&["uncordon", &first_node]).expect("uncordon");
    assert!(
        f["status"]["attempts"].as_u64().unwrap_or(0) >= 2,
        "{}",
        f["status"]
    );
    let second = trainer_pods(&s, "support")
        .into_iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .find(|n| *n != first_pod)
        .expect("a second trainer pod");
    assert_ne!(node_of(&s, &second), first_node);

    // The LoraAdapter: in the bucket, verified there with the store Secret.
    let la = s.wait_phase("loraadapter", "support", "Ready", LONG);
    let adapter_uri = la["spec"]["uri"].as_str().expect("uri");
    assert!(
        adapter_uri.starts_with(&format!("{area}/finetune/")),
        "{adapter_uri}"
    );
    assert_eq!(la["spec"]["credentialsSecretRef"]["name"], "tailor-store");
    // The run's metrics, in the bucket, say where the second attempt started.
    let got = tempfile::tempdir().expect("tempdir");
    let out = Command::new(binary("tailor-fetch").expect("tailor-fetch"))
        .arg(format!("{adapter_uri}/metrics.json"))
        .arg(got.path())
        .envs(s3.env())
        .output()
        .expect("fetch metrics");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: Value = serde_json::from_slice(
        &std::fs::read(got.path().join("metrics.json")).expect("metrics.json"),
    )
    .expect("json");
    assert!(
        metrics["resumedFromStep"].as_u64().unwrap_or(0) >= 5,
        "resumed: {metrics}"
    );
    println!(
        "store: attempt 2 on {} resumed from step {} of {} (checkpoint pulled from the bucket)",
        node_of(&s, &second),
        metrics["resumedFromStep"],
        metrics["totalSteps"]
    );

    // Served from the bucket, answering the openai client.
    let mut md = ModelDeployment::new("support", "support").manifest(s.ns());
    md["spec"]["baseModel"]["uri"] = Value::from(base_uri.as_str());
    md["spec"]["baseModel"]["credentialsSecretRef"] = json!({"name": "tailor-store"});
    s.apply(&md.to_string()).expect("apply ModelDeployment");
    let served = s.wait_for("the deployment to serve", LONG, || {
        let m = s.object("modeldeployment", "support")?;
        condition(&m, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(m)
    });
    let endpoint = served["status"]["endpoint"].as_str().expect("endpoint");
    let answer = ask(endpoint, &["support"]);
    assert_eq!(answer["support"]["model"], "support", "{answer}");

    // No claim anywhere in the namespace, and no secret value in any log, Event or status.
    let pvcs = s.get_json(&["pvc"]).expect("pvcs");
    assert_eq!(pvcs["items"], json!([]), "{pvcs}");
    let haystack = s.logs_events_and_statuses();
    assert!(haystack.contains(&area), "the logs were read");
    assert!(!haystack.contains(SECRET_KEY), "the secret key leaked");
}
