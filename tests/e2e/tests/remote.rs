//! Inputs from an object store (issue 11): a Dataset whose source is a prefix of an S3 bucket,
//! and a FineTuneJob and a ModelDeployment whose base model lies in that bucket, each fetched
//! into its pods by a `tailor-fetch` init container with the credentials of a Secret — no
//! volume holds the inputs. A wrong secret and a missing object each fail with a condition
//! naming the URI and the cause, and no secret value shows in any log, Event or status.
//!
//! An adapter published to the bucket and imported as a LoraAdapter there is verified by the
//! operator where it is stored (a wrong sha256 fails it, naming both digests) and served by
//! pods that fetch it when they load it, answering the openai client.
//!
//! An `hf://` base model is pinned to the commit its branch names when the run's Job is made,
//! and a ModelDeployment's revision to the one it names when the revision is first seen.
//!
//! The bucket is served by `s3s-fs` (`tailor-local-s3`; see that crate for why not moto), the
//! Hub by `tailor_local_s3::hub::LocalHub`, on loopback ports the simulated pods reach, so these
//! tests need tailor-sim.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tailor_e2e::{
    BASE_MODEL, FineTuneJob, ModelDeployment, Scenario, ask, condition, phase, quickstart_examples,
    upload,
};
use tailor_local_s3::LocalS3;
use tailor_local_s3::hub::{LocalHub, Repo};

const LONG: Duration = Duration::from_secs(300);
const BUCKET: &str = "tailor-e2e";
/// Distinctive, so the grep for them cannot miss.
const ACCESS_KEY: &str = "AKIATAILORE2EKEY0001";
const SECRET_KEY: &str = "e2e-s3-secret/VALUE+k9=";
/// `storeEndpointAllowList` of `manifests/overlays/sim`.
const S3_ADDR: &str = "127.0.0.1:18090";

fn dataset(s: &Scenario, name: &str, uri: &str, secret: &str) {
    s.apply(&format!(
        "apiVersion: tailor.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  source: {{uri: \"{uri}\", credentialsSecretRef: {{name: {secret}}}}}\n  format: chat\n  preparation: {{minExamples: 10, split: {{validation: 0.2}}}}\n",
        ns = s.ns()
    ))
    .expect("apply Dataset");
}

fn ready_message(o: &Value) -> String {
    condition(o, "Ready")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The pods of this namespace whose name starts with `prefix`.
fn pods(s: &Scenario, prefix: &str) -> Vec<Value> {
    s.get_json(&["pods"]).expect("pods")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

/// The fetch runs in an init container that holds the Secret; the container that reads the
/// input does not.
fn assert_fetched_with(pod: &Value, uri: &str, secret: &str) {
    let init = pod["spec"]["initContainers"].as_array().expect("init");
    let fetch = init
        .iter()
        .find(|c| c["args"][0] == uri)
        .unwrap_or_else(|| panic!("no fetch of {uri}: {init:?}"));
    assert_eq!(fetch["envFrom"][0]["secretRef"]["name"], secret);
    assert_eq!(fetch["securityContext"]["allowPrivilegeEscalation"], false);
    for c in pod["spec"]["containers"].as_array().expect("containers") {
        assert!(c["envFrom"].is_null(), "{}", c["name"]);
    }
}

#[test]
fn a_dataset_and_a_base_model_in_a_bucket_train_and_serve() {
    let s = Scenario::new("e2e-s3");
    let env = s.env;
    if env.state_dir.is_none() {
        eprintln!(
            "remote: needs tailor-sim (the test's S3 server listens on loopback); not applicable to TAILOR_E2E_KUBECONFIG"
        );
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    // On the port the sim overlay's operator config lists in storeEndpointAllowList (the
    // operator verifies adapters stored in the bucket).
    let s3 = LocalS3::start_on(
        S3_ADDR.parse().expect("addr"),
        root.path(),
        ACCESS_KEY,
        SECRET_KEY,
    )
    .expect("start s3s-fs");
    s3.create_bucket(BUCKET).expect("bucket");
    let base_uri = format!("s3://{BUCKET}/models/base");
    let base = s.artifact_path(BASE_MODEL).expect("the suite's base model");
    upload(&base, &base_uri, &s3.env());
    // The data: a prefix of two JSONL files.
    let lines: Vec<String> = quickstart_examples().into_iter().take(30).collect();
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("part-1.jsonl"), lines[..15].join("\n")).expect("write");
    std::fs::write(data.path().join("part-2.jsonl"), lines[15..].join("\n")).expect("write");
    let prefix = format!("s3://{BUCKET}/data/support/");
    upload(data.path(), &prefix, &s3.env());
    s.secret("s3-creds", &s3.env());
    let wrong: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_SECRET_ACCESS_KEY" => (k, "not-the-secret".to_string()),
            _ => (k, v),
        })
        .collect();
    s.secret("s3-wrong", &wrong);

    // Dataset from the bucket prefix.
    dataset(&s, "support", &prefix, "s3-creds");
    let ds = s.wait_phase("dataset", "support", "Ready", LONG);
    let valid = lines
        .iter()
        .filter(|l| tailor_e2e::is_valid_chat(l))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert_eq!(ds["status"]["stats"]["examples"], valid, "{}", ds["status"]);
    let prepare = pods(&s, "support-prepare-");
    assert!(!prepare.is_empty());
    assert_fetched_with(&prepare[0], &prefix, "s3-creds");

    // A FineTuneJob on the base model in the bucket.
    let yaml = FineTuneJob::new("support-s3", "support")
        .base_model(&base_uri)
        .yaml(s.ns())
        .replace(
            &format!("baseModel: {{uri: {base_uri}}}"),
            &format!(
                "baseModel: {{uri: \"{base_uri}\", credentialsSecretRef: {{name: s3-creds}}}}"
            ),
        );
    assert!(yaml.contains("credentialsSecretRef"), "{yaml}");
    s.apply(&yaml).expect("apply FineTuneJob");
    let ftj = s.wait_phase("finetunejob", "support-s3", "Succeeded", LONG);
    let train = pods(&s, "support-s3-train-");
    assert!(!train.is_empty(), "{}", ftj["status"]);
    assert_fetched_with(&train[0], &base_uri, "s3-creds");
    let la = s.wait_phase("loraadapter", "support-s3", "Ready", LONG);
    assert_eq!(la["spec"]["baseModel"]["uri"], base_uri.as_str());

    // Served on the same base, fetched by the serving pods.
    let mut md = ModelDeployment::new("support-s3", "support-s3").manifest(s.ns());
    md["spec"]["baseModel"]["uri"] = Value::from(base_uri.as_str());
    md["spec"]["baseModel"]["credentialsSecretRef"] = serde_json::json!({"name": "s3-creds"});
    s.apply(&md.to_string()).expect("apply ModelDeployment");
    let served = s.wait_for("the deployment to serve", LONG, || {
        let m = s.object("modeldeployment", "support-s3")?;
        condition(&m, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(m)
    });
    assert!(
        ready_message(&served).contains("support-s3"),
        "{}",
        served["status"]
    );
    let server = pods(&s, "support-s3-")
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "tailor-server")
        .expect("a serving pod");
    assert_fetched_with(&server, &base_uri, "s3-creds");

    // The adapter published to the bucket and imported as a LoraAdapter there: the operator
    // verifies it in the bucket (no volume), the servers fetch it when they load it.
    let trained = s
        .artifact_path(la["spec"]["uri"].as_str().expect("uri"))
        .expect("the trained adapter's files");
    let adapter_uri = format!("s3://{BUCKET}/adapters/support-s3");
    upload(&trained, &adapter_uri, &s3.env());
    let import = |name: &str, sha256: &str| {
        format!(
            "apiVersion: tailor.dev/v1alpha1\nkind: LoraAdapter\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  baseModel: {{uri: \"{base_uri}\"}}\n  uri: \"{adapter_uri}\"\n  credentialsSecretRef: {{name: s3-creds}}\n  rank: {rank}\n  alpha: {alpha}\n  sha256: \"{sha256}\"\n",
            ns = s.ns(),
            rank = la["spec"]["rank"],
            alpha = la["spec"]["alpha"],
        )
    };
    let sha = la["spec"]["sha256"].as_str().expect("sha256").to_string();
    s.apply(&import("published", &sha))
        .expect("apply LoraAdapter");
    s.apply(&import("tampered", &"0".repeat(64)))
        .expect("apply LoraAdapter");
    s.wait_phase("loraadapter", "published", "Ready", LONG);
    let tampered = s.wait_phase("loraadapter", "tampered", "Failed", LONG);
    let msg = ready_message(&tampered);
    assert!(
        msg.contains(&adapter_uri) && msg.contains(&sha) && msg.contains(&"0".repeat(64)),
        "{msg}"
    );
    let mut md = ModelDeployment::new("published", "published").manifest(s.ns());
    md["spec"]["baseModel"]["uri"] = Value::from(base_uri.as_str());
    md["spec"]["baseModel"]["credentialsSecretRef"] = serde_json::json!({"name": "s3-creds"});
    s.apply(&md.to_string()).expect("apply ModelDeployment");
    let served = s.wait_for("the published adapter to serve", LONG, || {
        let m = s.object("modeldeployment", "published")?;
        condition(&m, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(m)
    });
    assert!(
        ready_message(&served).contains("published"),
        "{}",
        served["status"]
    );
    let server = pods(&s, "published-")
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "tailor-server")
        .expect("a serving pod");
    // The server container holds the adapter's credentials (it fetches at load time), and no
    // volume carries the adapter.
    let c = &server["spec"]["containers"][0];
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "s3-creds", "{c}");
    let endpoint = served["status"]["endpoint"].as_str().expect("endpoint");
    let answer = ask(endpoint, &["support"]);
    assert_eq!(answer["support"]["model"], "published", "{answer}");
    assert!(
        !answer["support"]["content"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{answer}"
    );

    // Faults: each a condition naming the URI and the cause.
    let one = format!("{prefix}part-1.jsonl");
    dataset(&s, "wrong-key", &one, "s3-wrong");
    let missing = format!("s3://{BUCKET}/data/nope.jsonl");
    dataset(&s, "missing", &missing, "s3-creds");
    for (name, uri, cause) in [
        ("wrong-key", one.as_str(), "PermissionDenied"),
        ("missing", missing.as_str(), "NotFound"),
    ] {
        let ds = s.wait_phase("dataset", name, "Failed", LONG);
        let msg = ready_message(&ds);
        assert!(
            msg.contains("fetching the source") && msg.contains(uri) && msg.contains(cause),
            "{name}: {msg}"
        );
    }

    // A Secret that does not exist yet: Pending, saying so, until it is created.
    dataset(&s, "later", &one, "s3-later");
    let ds = s.wait_for("the Dataset to wait for its Secret", LONG, || {
        let d = s.object("dataset", "later")?;
        condition(&d, "Ready")
            .is_some_and(|c| c["reason"] == "SecretNotFound")
            .then_some(d)
    });
    assert_eq!(phase(&ds), "Pending");
    assert!(
        ready_message(&ds).contains("spec.source.credentialsSecretRef")
            && ready_message(&ds).contains("s3-later"),
        "{}",
        ready_message(&ds)
    );
    s.secret("s3-later", &s3.env());
    s.wait_phase("dataset", "later", "Ready", LONG);

    // No secret value in any log, Event or status.
    let haystack = s.logs_events_and_statuses();
    assert!(haystack.contains(&prefix), "the logs were read");
    assert!(!haystack.contains(SECRET_KEY), "the secret key leaked");
    assert_eq!(phase(&s.object("dataset", "support").expect("ds")), "Ready");
}

/// Every file under `dir`, by its path relative to it.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&p).expect("read"),
                );
            }
        }
    }
    out
}

const FIRST: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const SECOND: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const HF_TOKEN: &str = "hf_tailorE2eTokenVALUE0042";
/// `hubEndpointAllowList` of `manifests/overlays/sim`.
const HUB_ADDR: &str = "127.0.0.1:18089";

#[test]
fn an_hf_base_model_is_pinned_to_the_commit_main_named_when_the_run_began() {
    let s = Scenario::new("e2e-hub");
    let env = s.env;
    if env.state_dir.is_none() {
        eprintln!(
            "remote: needs tailor-sim (the test's Hub endpoint listens on loopback); not applicable to TAILOR_E2E_KUBECONFIG"
        );
        return;
    }
    // The suite's base model as two commits of one repository; `main` names the first.
    let base = files(&s.artifact_path(BASE_MODEL).expect("the suite's base model"));
    let mut repo = Repo::one_commit(FIRST, base.clone());
    repo.commits.insert(SECOND.to_string(), base);
    let repo_key = "models/org/tiny-base";
    // On the port the sim overlay's operator config lists in hubEndpointAllowList.
    let hub = LocalHub::start_on(
        HUB_ADDR.parse().expect("addr"),
        std::collections::BTreeMap::from([(repo_key.to_string(), repo)]),
        HF_TOKEN,
    )
    .expect("local Hub");
    s.secret(
        "hub",
        &[
            ("HF_ENDPOINT".to_string(), hub.endpoint.clone()),
            ("HF_TOKEN".to_string(), HF_TOKEN.to_string()),
        ],
    );
    s.quickstart_dataset("support", 24);
    let ftj = |name: &str| {
        FineTuneJob::new(name, "support")
            .base_model("hf://org/tiny-base")
            .yaml(s.ns())
            .replace(
                "baseModel: {uri: hf://org/tiny-base}",
                "baseModel: {uri: \"hf://org/tiny-base\", credentialsSecretRef: {name: hub}}",
            )
    };
    s.apply(&ftj("first")).expect("apply FineTuneJob");
    // The run's Job fetches the commit main named when the operator made it ...
    let job = s.wait_for("the first train Job", LONG, || {
        let jobs = s.get_json(&["jobs"]).ok()?;
        jobs["items"]
            .as_array()?
            .iter()
            .find(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("first-train-"))
            })
            .cloned()
    });
    let fetch = &job["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(
        fetch["args"][0],
        format!("hf://org/tiny-base@{FIRST}"),
        "{fetch}"
    );
    // ... and keeps it after main moves: every attempt of the run trains on the same bytes.
    hub.set_ref(repo_key, "main", SECOND);
    let first = s.wait_phase("finetunejob", "first", "Succeeded", LONG);
    assert_eq!(
        first["status"]["baseModelRevision"], FIRST,
        "{}",
        first["status"]
    );
    let la = s.wait_phase("loraadapter", "first", "Ready", LONG);
    assert_eq!(la["status"]["lineage"]["baseModelRevision"], FIRST);
    assert_eq!(la["spec"]["baseModel"]["uri"], "hf://org/tiny-base");
    for p in pods(&s, "first-train-") {
        assert_fetched_with(&p, &format!("hf://org/tiny-base@{FIRST}"), "hub");
    }

    // A run that begins after main moved trains on the new commit.
    s.apply(&ftj("second")).expect("apply FineTuneJob");
    let second = s.wait_phase("finetunejob", "second", "Succeeded", LONG);
    assert_eq!(second["status"]["baseModelRevision"], SECOND);

    // Served: the deployment's revision is pinned to the commit main names when the revision is
    // first seen, and a pod made after main moved (a restart, a new replica) fetches that commit.
    let mut md = ModelDeployment::new("hub-served", "second").manifest(s.ns());
    md["spec"]["baseModel"]["uri"] = Value::from("hf://org/tiny-base");
    md["spec"]["baseModel"]["credentialsSecretRef"] = serde_json::json!({"name": "hub"});
    s.apply(&md.to_string()).expect("apply ModelDeployment");
    let serving = |what: &str| {
        s.wait_for(what, LONG, || {
            let m = s.object("modeldeployment", "hub-served")?;
            let server: Vec<Value> = pods(&s, "hub-served-")
                .into_iter()
                .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "tailor-server")
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            let ready = condition(&m, "Ready").is_some_and(|c| c["status"] == "True");
            (ready && !server.is_empty() && server.iter().all(tailor_e2e::is_ready))
                .then_some((m, server))
        })
    };
    let (served, before) = serving("the Hub base model to serve");
    assert_eq!(
        served["status"]["baseModelRevision"], SECOND,
        "{}",
        served["status"]
    );
    for p in &before {
        assert_fetched_with(p, &format!("hf://org/tiny-base@{SECOND}"), "hub");
    }
    hub.set_ref(repo_key, "main", FIRST);
    for p in &before {
        let name = p["metadata"]["name"].as_str().expect("name");
        s.kubectl(&["delete", "pod", name, "--wait=false"])
            .expect("delete the serving pod");
    }
    let (served, after) = serving("the serving pods to be recreated");
    let names = |ps: &[Value]| -> Vec<String> {
        ps.iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    assert!(
        names(&after).iter().all(|n| !names(&before).contains(n)),
        "new pods: {:?} after {:?}",
        names(&after),
        names(&before)
    );
    for p in &after {
        assert_fetched_with(p, &format!("hf://org/tiny-base@{SECOND}"), "hub");
    }
    assert_eq!(served["status"]["baseModelRevision"], SECOND);

    let haystack = s.logs_events_and_statuses();
    assert!(
        haystack.contains("hf://org/tiny-base"),
        "the logs were read"
    );
    assert!(!haystack.contains(HF_TOKEN), "the Hub token leaked");
}
