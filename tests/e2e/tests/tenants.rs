//! Two tenants of one cluster (issue 18): `mallory`, a ServiceAccount of `e2e-attacker` allowed
//! only tailor.dev objects (the `tailor-edit` role of `manifests/base/tenant-rbac.yaml`) and
//! ConfigMaps in its namespace, tries what worked before artifacts were namespaced, reads were
//! bounded and serving pods required a token. Each attempt must fail with a clear condition or a
//! 403, and the victim's data, adapter and endpoint must be unchanged afterwards.
//!
//! Needs tailor-sim (it writes into the artifact store and reads the operator's process); on a
//! real cluster (`TAILOR_E2E_KUBECONFIG`) the suite is not applicable and says so.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tailor_e2e::{IMPORTED, ModelDeployment, Scenario, condition, is_ready, phase};

const LONG: Duration = Duration::from_secs(300);
const SHORT: Duration = Duration::from_secs(120);
const VICTIM_ADAPTER: &str = "pvc://tailor-artifacts/adapters/e2e-imported";

/// What a status may weigh, and the operator's memory, whatever a tenant feeds it.
const MAX_OBJECT_BYTES: usize = 64 * 1024;
const MAX_OPERATOR_RSS: u64 = 64 * 1024 * 1024;

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read artifact")))
}

/// The tenant: `kubectl` as the ServiceAccount `mallory` of `e2e-attacker`.
struct Mallory<'a> {
    s: &'a Scenario,
    token: String,
}

impl<'a> Mallory<'a> {
    /// A ServiceAccount bound to `tailor-edit` and a Role for ConfigMaps in its namespace.
    fn create(s: &'a Scenario) -> Mallory<'a> {
        let ns = s.ns();
        s.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: mallory, namespace: {ns}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: mallory-tailor, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tailor-edit}}\nsubjects: [{{kind: ServiceAccount, name: mallory, namespace: {ns}}}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: configmaps, namespace: {ns}}}\nrules: [{{apiGroups: [\"\"], resources: [configmaps], verbs: [get, list, watch, create, update, patch, delete]}}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: mallory-configmaps, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmaps}}\nsubjects: [{{kind: ServiceAccount, name: mallory, namespace: {ns}}}]\n"
        ))
        .expect("mallory's RBAC");
        let token = s
            .kubectl(&["create", "token", "mallory"])
            .expect("a token for mallory")
            .trim()
            .to_string();
        Mallory { s, token }
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["--token", self.token.as_str()];
        a.extend_from_slice(args);
        self.s.env.kubectl(&a)
    }

    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.s
            .env
            .kubectl_stdin(&["--token", &self.token, "apply", "-f", "-"], Some(yaml))
    }
}

/// The phase and Ready condition of `kind/name` once the operator has written one.
fn settled(s: &Scenario, kind: &str, name: &str) -> Value {
    s.wait_for(
        &format!("{kind}/{name} to get a Ready condition"),
        SHORT,
        || {
            s.object(kind, name)
                .filter(|o| condition(o, "Ready").is_some())
        },
    )
}

fn ready_message(o: &Value) -> String {
    let c = condition(o, "Ready").cloned().unwrap_or_default();
    assert_eq!(c["status"], "False", "{o}");
    c["message"].as_str().unwrap_or_default().to_string()
}

/// One HTTP/1.1 request; the status code.
fn http_status(addr: &str, method: &str, path: &str, body: &str) -> u16 {
    let mut conn = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).expect("status line");
    String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("status code")
}

/// One HTTP/1.1 GET; the body of a 200 answer.
fn http_body(addr: &str, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    conn.take(1 << 20).read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The resident memory of the operator's process (its pid as the simulated kubelet recorded it).
fn operator_rss(s: &Scenario) -> u64 {
    let pod = s.env.ready_operator_pod();
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let state = s.env.state_dir.as_ref().expect("tailor-sim state");
    let record = std::fs::read_to_string(state.join("pods").join(uid).join("pids/operator"))
        .expect("the operator container's pid record");
    let pid = record.split_whitespace().next().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[test]
fn a_tenant_reaches_no_other_tenants_data_pods_or_endpoints() {
    let victim = Scenario::new("e2e-victim");
    let env = victim.env;
    if env.state_dir.is_none() {
        eprintln!(
            "tenants: needs tailor-sim (it reads the artifact store and the operator's process); not applicable to TAILOR_E2E_KUBECONFIG"
        );
        return;
    }
    let attacker = Scenario::new("e2e-attacker");
    let mallory = Mallory::create(&attacker);

    // The victim: an adapter in its area, served with user API keys.
    victim.import_adapters(&["victim-v1"]);
    let victim_file = victim
        .artifact_path(VICTIM_ADAPTER)
        .expect("victim artifact")
        .join("adapter_model.safetensors");
    let victim_sha = sha256_file(&victim_file);
    victim
        .apply("apiVersion: v1\nkind: Secret\nmetadata: {name: support-keys, namespace: e2e-victim}\nstringData: {keys: \"sk-victim-4f1c2a9e77d0\\n\"}\n")
        .expect("API key Secret");
    let mut md = ModelDeployment::new("support", "victim-v1").manifest(victim.ns());
    md["spec"]["auth"] = json!({"apiKeySecretRef": {"name": "support-keys", "key": "keys"}});
    env.apply(&md.to_string()).expect("apply ModelDeployment");
    victim.wait_for("the victim's deployment to be Healthy", LONG, || {
        victim
            .object("modeldeployment", "support")
            .filter(|m| phase(m) == "Healthy" && m["status"]["endpoint"].is_string())
    });

    // Mallory's RBAC is what the suite claims: no Secrets, no status, no pods, no other namespace.
    for (args, what) in [
        (
            vec!["-n", "e2e-victim", "get", "loraadapters"],
            "another namespace",
        ),
        (
            vec!["-n", "e2e-victim", "get", "secret", "support-token"],
            "the victim's token",
        ),
        (
            vec!["-n", "e2e-attacker", "get", "secrets"],
            "its own Secrets",
        ),
        (vec!["-n", "e2e-attacker", "get", "pods"], "pods"),
    ] {
        let err = mallory.kubectl(&args).expect_err(what);
        assert!(err.to_string().contains("Forbidden"), "{what}: {err:#}");
    }

    // 1 and 2: an adapter naming the victim's artifact resolves inside mallory's own area,
    // never verifies, and deleting it with deletionPolicy Delete removes nothing.
    let steal = |name: &str, uri: &str| {
        format!(
            "apiVersion: tailor.dev/v1alpha1\nkind: LoraAdapter\nmetadata: {{name: {name}, namespace: e2e-attacker}}\nspec:\n  baseModel: {{uri: pvc://tailor-artifacts/models/base}}\n  uri: {uri}\n  rank: 4\n  alpha: 8\n  targetModules: [q_proj, v_proj]\n  deletionPolicy: Delete\n"
        )
    };
    mallory
        .apply(&steal(
            "steal",
            &format!("pvc://tailor-artifacts/e2e-victim/{IMPORTED}"),
        ))
        .expect("mallory may create LoraAdapters");
    let la = settled(&attacker, "loraadapter", "steal");
    assert_ne!(phase(&la), "Ready", "{la}");
    let msg = ready_message(&la);
    assert!(
        msg.contains("e2e-attacker/e2e-victim"),
        "the path resolves in mallory's own area: {msg}"
    );
    for (name, uri, says) in [
        ("whole", "pvc://tailor-artifacts", "whole artifact volume"),
        ("host", "file:///etc", "file://"),
    ] {
        match mallory.apply(&steal(name, uri)) {
            Err(e) => assert!(e.to_string().contains("uri"), "{name}: {e:#}"),
            Ok(_) => {
                let la = settled(&attacker, "loraadapter", name);
                assert_ne!(phase(&la), "Ready", "{la}");
                let msg = ready_message(&la);
                assert!(msg.contains(says), "{name}: {msg}");
            }
        }
    }
    for name in ["steal", "whole", "host"] {
        let _ = mallory.kubectl(&[
            "-n",
            "e2e-attacker",
            "delete",
            "loraadapter",
            name,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ]);
        assert!(attacker.object("loraadapter", name).is_none(), "{name}");
    }
    assert_eq!(
        sha256_file(&victim_file),
        victim_sha,
        "the victim's artifact is untouched"
    );
    assert_eq!(
        victim
            .object("loraadapter", "victim-v1")
            .map(|o| phase(&o).to_string()),
        Some("Ready".into())
    );

    // 3: a Dataset naming a node path: refused, and no pod mounts the node's filesystem.
    mallory
        .apply("apiVersion: tailor.dev/v1alpha1\nkind: Dataset\nmetadata: {name: host, namespace: e2e-attacker}\nspec:\n  format: chat\n  source: {uri: \"file:///etc/hostname\"}\n")
        .expect("mallory may create Datasets");
    let ds = settled(&attacker, "dataset", "host");
    let msg = ready_message(&ds);
    assert!(
        msg.contains("file://"),
        "says file:// is not allowed: {msg}"
    );
    let jobs = attacker.get_json(&["jobs"]).expect("jobs");
    assert_eq!(jobs["items"], json!([]), "no prepare Job for a host path");

    // 4: 25 lines with a 2 MB role each: the status stays small and the operator's memory flat,
    // before and after a restart (which re-reads what the prepare step wrote).
    let hostile = attacker
        .artifact_path("pvc://tailor-artifacts/data/hostile.jsonl")
        .expect("attacker area");
    std::fs::create_dir_all(hostile.parent().expect("dir")).expect("mkdir");
    let role = "r".repeat(2 << 20);
    let mut body = String::new();
    for i in 0..25 {
        body.push_str(
            &json!({"messages": [{"role": role, "content": format!("hi {i}")}, {"role": "assistant", "content": "hello"}]})
                .to_string(),
        );
        body.push('\n');
    }
    std::fs::write(&hostile, body).expect("write hostile JSONL");
    mallory
        .apply("apiVersion: tailor.dev/v1alpha1\nkind: Dataset\nmetadata: {name: hostile, namespace: e2e-attacker}\nspec:\n  format: chat\n  preparation: {minExamples: 1}\n  source: {uri: \"pvc://tailor-artifacts/data/hostile.jsonl\"}\n")
        .expect("apply hostile Dataset");
    let ds = attacker.wait_phase("dataset", "hostile", "Failed", LONG);
    let check_hostile = |when: &str| {
        let ds = attacker.object("dataset", "hostile").expect("dataset");
        let bytes = ds.to_string().len();
        assert!(
            bytes < MAX_OBJECT_BYTES,
            "{when}: the Dataset weighs {bytes} bytes"
        );
        assert_eq!(
            ds["status"]["stats"]["invalid"], 25,
            "{when}: {}",
            ds["status"]
        );
        let rss = operator_rss(&attacker);
        eprintln!(
            "tenants: {when}: Dataset {bytes} bytes, operator RSS {} KiB",
            rss / 1024
        );
        assert!(rss < MAX_OPERATOR_RSS, "{when}: operator RSS {rss} bytes");
    };
    assert!(!ready_message(&ds).is_empty());
    check_hostile("after preparation");
    let before = env.ready_operator_pod();
    env.kubectl(&[
        "-n",
        "tailor-system",
        "delete",
        "pod",
        before["metadata"]["name"].as_str().expect("name"),
        "--wait=false",
    ])
    .expect("restart the operator");
    let after = attacker.wait_for("a new operator pod", SHORT, || {
        env.operator_pod()
            .filter(|p| is_ready(p) && p["metadata"]["uid"] != before["metadata"]["uid"])
    });
    // The new operator reads every Dataset again when it starts: wait until its own metrics
    // count as many Dataset reconciles as there are Datasets.
    let datasets = env
        .get_json(&["get", "datasets", "-A"])
        .ok()
        .and_then(|d| d["items"].as_array().map(Vec::len))
        .unwrap_or(0);
    let metrics = format!(
        "{}:8080",
        after["status"]["podIP"].as_str().expect("operator podIP")
    );
    attacker.wait_for("the new operator to reconcile every Dataset", SHORT, || {
        let text = http_body(&metrics, "/metrics")?;
        let n: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("tailor_operator_reconciles_total{controller=\"dataset\"} ")
            })?
            .trim()
            .parse()
            .ok()?;
        (n >= datasets as f64).then_some(())
    });
    check_hostile("after an operator restart");

    // 5: SSRF: a Prometheus address the admin did not allow is refused, never fetched.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let mut ssrf = ModelDeployment::new("ssrf", "steal")
        .rollout(json!({"analysis": {"metricsSource": "prometheus", "prometheus": {"address": format!("http://127.0.0.1:{port}/latest/meta-data/iam/security-credentials/#")}}}))
        .manifest("e2e-attacker");
    ssrf["metadata"]["annotations"] = json!({});
    mallory
        .apply(&ssrf.to_string())
        .expect("mallory may create ModelDeployments");
    let md = settled(&attacker, "modeldeployment", "ssrf");
    let msg = ready_message(&md);
    assert!(msg.contains("prometheusAllowList"), "{msg}");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            listener.accept().is_err(),
            "the operator connected to a tenant's address"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 6: the victim's serving pods answer nothing without the deployment's token: no inference,
    // no adapter unloads, no probing of paths.
    let pods = victim
        .get_json(&["pods", "-l", "app.kubernetes.io/name=tailor-server"])
        .expect("pods");
    let pod = pods["items"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| is_ready(p)))
        .expect("a ready serving pod");
    let addr = format!("{}:8000", pod["status"]["podIP"].as_str().expect("podIP"));
    for (method, path, body) in [
        ("GET", "/v1/models", ""),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"base","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "POST",
            "/v1/unload_lora_adapter",
            r#"{"lora_name":"support"}"#,
        ),
        ("DELETE", "/admin/adapters/support", ""),
        (
            "POST",
            "/v1/load_lora_adapter",
            r#"{"lora_name":"x","lora_path":"/etc"}"#,
        ),
    ] {
        assert_eq!(
            http_status(&addr, method, path, body),
            401,
            "{method} {path} without the token"
        );
    }
    let md = victim.object("modeldeployment", "support").expect("md");
    assert_eq!(phase(&md), "Healthy", "{}", md["status"]);
    let loaded: Vec<&Value> = md["status"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    assert!(
        !loaded.is_empty()
            && loaded
                .iter()
                .all(|p| p["loaded"].as_array().is_some_and(|l| !l.is_empty())),
        "the victim's adapter stays loaded: {}",
        md["status"]
    );

    // 7: forged evidence: a lineage annotation is not lineage, and status is not writable.
    attacker.imported_artifact();
    mallory
        .apply(&format!(
            "apiVersion: tailor.dev/v1alpha1\nkind: LoraAdapter\nmetadata:\n  name: forged\n  namespace: e2e-attacker\n  annotations:\n    tailor.dev/lineage: '{{\"validationLoss\": 0.0001, \"baseValidationLoss\": 9.0}}'\nspec:\n  baseModel: {{uri: pvc://tailor-artifacts/models/base}}\n  uri: pvc://tailor-artifacts/{IMPORTED}\n  rank: 4\n  alpha: 8\n  targetModules: [q_proj, v_proj]\n"
        ))
        .expect("apply forged adapter");
    let la = attacker.wait_phase("loraadapter", "forged", "Ready", SHORT);
    assert!(
        la["status"]["lineage"]["validationLoss"].is_null(),
        "an annotation is not evidence: {}",
        la["status"]
    );
    let err = mallory
        .kubectl(&[
            "-n",
            "e2e-attacker",
            "patch",
            "loraadapter",
            "forged",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"lineage":{"validationLoss":0.0001}}}"#,
        ])
        .expect_err("status is the operator's");
    assert!(err.to_string().contains("Forbidden"), "{err:#}");

    // No secret value in any log, Event or status of the suite.
    let secret = victim
        .get_json(&["secret", "support-token"])
        .expect("token Secret");
    let token = secret["data"]["token"].as_str().expect("token");
    let token = String::from_utf8(STANDARD.decode(token).expect("base64")).expect("utf-8");
    assert!(token.len() >= 32, "a strong token");
    let haystack = victim.logs_events_and_statuses();
    assert!(haystack.len() > 10_000, "the logs were read");
    for (what, value) in [
        ("token", token.as_str()),
        ("API key", "sk-victim-4f1c2a9e77d0"),
    ] {
        assert!(!haystack.contains(value), "the {what} leaked");
    }
}
