//! issue 7's "Done when" list, end to end: ModelDeployments served through their router,
//! adapter and pod canaries promoted or rolled back by analysis, the operator restarted
//! mid-rollout. One cluster per test process (tailor-sim unless `TAILOR_E2E_KUBECONFIG` is
//! set), one namespace per test. The official `openai` Python client talks to status.endpoint.
//!
//! Canary tests use imported adapters (PEFT's own initialisation, written once into the shared
//! artifact storage) so that only the quickstart pays for training; the test-only fault
//! injection (`tailor.dev/test-fault-injection`) makes an adapter fail a fraction of requests.
//!
//! Size (over 700 lines, on purpose): one suite per cluster start (a cargo test binary is one
//! process); each test is one of the issue's acceptance scenarios.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tailor_e2e::{
    FineTuneJob, ModelDeployment, Scenario, ask, condition, phase, quickstart_examples, repo_root,
    wait_for,
};

const LONG: Duration = Duration::from_secs(300);
const SHORT: Duration = Duration::from_secs(120);

fn client_script() -> PathBuf {
    repo_root().join("tests/e2e/tests/serving_client.py")
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An RFC 3339 time of the API (second precision) as Unix seconds.
fn unix(rfc3339: &str) -> f64 {
    let out = Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// The ModelDeployment `support` serving `adapter`, with `rollout`, on `replicas` CPU pods.
fn mdep(s: &Scenario, adapter: &str, rollout: Value, annotations: Value, replicas: u32) -> Value {
    ModelDeployment::new("support", adapter)
        .rollout(rollout)
        .annotations(annotations)
        .replicas(replicas)
        .manifest(s.ns())
}

fn get_mdep(s: &Scenario) -> Option<Value> {
    s.object("modeldeployment", "support")
}

fn wait_ready(s: &Scenario) -> Value {
    s.wait_for(
        &format!("ModelDeployment {}/support to be Ready and Healthy", s.ns()),
        LONG,
        || {
            get_mdep(s).filter(|m| {
                phase(m) == "Healthy"
                    && condition(m, "Ready").is_some_and(|c| c["status"] == "True")
                    && m["status"]["endpoint"].is_string()
            })
        },
    )
}

fn set_adapter(s: &Scenario, adapter: &str) {
    s.kubectl(&[
        "patch",
        "modeldeployment",
        "support",
        "--type=json",
        "-p",
        &json!([{"op": "replace", "path": "/spec/adapters/0/adapterRef/name", "value": adapter}])
            .to_string(),
    ])
    .expect("patch adapter");
}

fn serving_pod_uids(s: &Scenario) -> BTreeSet<String> {
    let pods = s
        .get_json(&["pods", "-l", "app.kubernetes.io/name=tailor-server"])
        .expect("pods");
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["uid"].as_str().map(String::from))
        .collect()
}

/// Steady load by the openai client: workers cycling through 40 users.
struct Load {
    /// `None` once stopped.
    child: Option<Child>,
    stop: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

/// A test that fails before `stop` must not leave the client running (it would load the
/// machine for the rest of the suite).
impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::fs::write(&self.stop, b"");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Load {
    fn start(endpoint: &str, model: &str) -> Load {
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = dir.path().join("stop");
        let out = dir.path().join("requests.jsonl");
        let child = Command::new("python3")
            .arg(client_script())
            .args(["load", endpoint, model])
            .arg(&stop)
            .arg(&out)
            .args(["4", "40"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 load client");
        let load = Load {
            child: Some(child),
            stop,
            out,
            _dir: dir,
        };
        wait_for(
            "the load client to get answers",
            SHORT,
            || (load.records().iter().filter(|r| r["ok"] == true).count() >= 3).then_some(()),
            || format!("{:?}", load.records().iter().take(5).collect::<Vec<_>>()),
        );
        load
    }

    fn records(&self) -> Vec<Value> {
        read_records(&self.out)
    }

    fn stop(mut self) -> Vec<Value> {
        std::fs::write(&self.stop, b"").expect("stop file");
        let child = self.child.take().expect("running");
        let res = child.wait_with_output().expect("load client exits");
        assert!(
            res.status.success(),
            "load client: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        read_records(&self.out)
    }
}

fn read_records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The newest entry of a ModelDeployment status's `history`.
fn last_record(status: &Value) -> Value {
    status["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default()
}

fn target_of(r: &Value) -> &str {
    r["target"].as_str().unwrap_or("")
}

fn errors(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["ok"] != true).collect()
}

#[test]
fn quickstart_serves_the_base_model_and_the_trained_adapter_to_the_openai_client() {
    let s = Scenario::new("e2e-serve");
    let (env, ns) = (s.env, s.ns());
    s.dataset("chat", &quickstart_examples());
    s.job(&FineTuneJob::new("support-v1", "chat"));
    s.wait_for("LoraAdapter support-v1 to be Ready", LONG, || {
        env.object(ns, "loraadapter", "support-v1")
            .filter(|o| phase(o) == "Ready")
    });
    // As in examples/quickstart: two GPU replicas, the gate on (the job recorded both losses).
    let mut md = mdep(
        &s,
        "support-v1",
        json!({"requireBetterThanBase": true}),
        json!({}),
        2,
    );
    md["spec"]["resources"]["gpus"] = json!(1);
    env.apply(&md.to_string()).expect("apply ModelDeployment");
    let md = wait_ready(&s);
    let st = &md["status"];
    let endpoint = st["endpoint"].as_str().expect("endpoint");
    // status.endpoint is the router's Service.
    let svc = env
        .object(ns, "service", "support")
        .expect("router Service");
    assert!(
        endpoint.contains(svc["spec"]["clusterIP"].as_str().unwrap_or("?")),
        "{endpoint}"
    );
    let pods = st["pods"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 2, "{st}");
    for p in &pods {
        assert_eq!(p["loaded"], json!(["support-v1"]), "{p}");
    }
    let answers = ask(endpoint, &["base", "support"]);
    for (m, served_as) in [("base", "base"), ("support", "support-v1")] {
        let a = &answers[m];
        assert!(
            a["content"].as_str().is_some_and(|c| !c.is_empty()),
            "{answers}"
        );
        // The router passes the backend's answer through: it names the adapter that answered.
        assert_eq!(a["model"], served_as, "{answers}");
        assert!(
            a["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
            "{answers}"
        );
    }
    // One GPU per serving pod.
    let deploys = env
        .get_json(&[
            "-n",
            ns,
            "get",
            "deployments",
            "-l",
            "app.kubernetes.io/name=tailor-server",
        ])
        .expect("deployments");
    let d = &deploys["items"][0];
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );

    // The scale subresource: status says how many serving pods are ready and which (the
    // selector an autoscaler reads); `kubectl scale` changes spec.replicas and rolls nothing
    // out.
    assert_eq!(st["replicas"], 2, "{st}");
    env.kubectl(&[
        "-n",
        ns,
        "scale",
        "modeldeployment",
        "support",
        "--replicas=3",
    ])
    .expect("kubectl scale");
    let scaled = s.wait_for("three ready serving pods", LONG, || {
        get_mdep(&s).filter(|m| m["status"]["replicas"] == 3)
    });
    assert_eq!(
        scaled["status"]["stableRevision"], st["stableRevision"],
        "scaling rolled something out"
    );
    assert_eq!(scaled["spec"]["replicas"], 3);
    let scale: Value = serde_json::from_str(
        &env.kubectl(&[
            "get",
            "--raw",
            &format!("/apis/tailor.dev/v1alpha1/namespaces/{ns}/modeldeployments/support/scale"),
        ])
        .expect("the scale subresource"),
    )
    .expect("Scale JSON");
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(
        (&scale["spec"]["replicas"], &scale["status"]["replicas"]),
        (&json!(3), &json!(3)),
        "{scale}"
    );
    let selector = scale["status"]["selector"].as_str().expect("selector");
    let selected = env
        .get_json(&["-n", ns, "get", "pods", "-l", selector])
        .expect("pods");
    let names: Vec<&str> = selected["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{selector}: {names:?}");
    // A HorizontalPodAutoscaler can take it as its target (its scaleTargetRef resolves to the
    // Scale above); the autoscaling itself is the HPA controller's, not tailor-sim's.
    env.apply(&format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: support, namespace: {ns}}}\nspec:\n  scaleTargetRef: {{apiVersion: tailor.dev/v1alpha1, kind: ModelDeployment, name: support}}\n  minReplicas: 2\n  maxReplicas: 4\n  metrics:\n  - type: Pods\n    pods:\n      metric: {{name: tailor_server_requests_waiting}}\n      target: {{type: AverageValue, averageValue: \"4\"}}\n"
    ))
    .expect("apply HorizontalPodAutoscaler");
    let hpa = env
        .object(ns, "horizontalpodautoscaler", "support")
        .expect("the HPA");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "ModelDeployment");
}

#[test]
fn adapter_canary_to_a_good_adapter_steps_and_promotes_without_new_pods_or_errors() {
    let s = Scenario::new("e2e-canary-good");
    let env = s.env;
    s.import_adapters(&["good-v1", "good-v2"]);
    let rollout = json!({
        "steps": [{"weight": 25, "pause": "5s"}, {"weight": 50, "pause": "5s"}],
        "analysis": {"interval": "2s", "minRequests": 2, "maxErrorRate": 0.05, "maxErrorRateIncrease": 0.02, "failureLimit": 2},
    });
    env.apply(&mdep(&s, "good-v1", rollout, json!({}), 2).to_string())
        .expect("apply");
    let md = wait_ready(&s);
    let endpoint = md["status"]["endpoint"].as_str().expect("endpoint");
    let stable = md["status"]["stableRevision"]
        .as_str()
        .expect("stable")
        .to_string();
    let uids = serving_pod_uids(&s);
    assert_eq!(uids.len(), 2);

    let load = Load::start(endpoint, "support");
    set_adapter(&s, "good-v2");
    let mut weights: Vec<u64> = vec![];
    let mut pods_seen = uids.clone();
    let done = s.wait_for("the canary to be promoted", LONG, || {
        let m = get_mdep(&s)?;
        let st = &m["status"];
        let w = st["canaryWeight"].as_u64().unwrap_or(0);
        if st["canaryRevision"].is_string() && weights.last() != Some(&w) {
            weights.push(w);
        }
        pods_seen.extend(serving_pod_uids(&s));
        (st["stableRevision"] != stable.as_str() && phase(&m) == "Healthy").then_some(m)
    });
    // Some more load after the promotion: the old adapter goes only once the router is off it.
    let promoted_at = now_s();
    wait_for(
        "requests answered by the promoted adapter",
        SHORT,
        || {
            (load
                .records()
                .iter()
                .filter(|r| r["t"].as_f64().unwrap_or(0.0) > promoted_at + 2.0)
                .count()
                >= 10)
                .then_some(())
        },
        String::new,
    );
    let records = load.stop();

    let st = &done["status"];
    let canary = last_record(st);
    assert_eq!(canary["outcome"], "Promoted", "{st}");
    assert_eq!(canary["kind"], "adapter", "{st}");
    assert_eq!(st["stableRevision"], canary["revision"]);
    // The weights followed the steps, in order (a poll may miss none: each step is 5 s).
    let steps: Vec<u64> = weights.iter().copied().filter(|w| *w > 0).collect();
    assert_eq!(steps, vec![25, 50], "weights seen: {weights:?}");
    // No serving pod was created or replaced.
    assert_eq!(
        pods_seen, uids,
        "serving pods changed during an adapter canary"
    );
    assert_eq!(serving_pod_uids(&s), uids);
    // The load saw no error, reached the canary, and ends on the new adapter only.
    assert!(errors(&records).is_empty(), "{:?}", errors(&records));
    let canary_target = format!("canary-{}", canary["revision"].as_str().unwrap_or(""));
    assert!(
        records.iter().any(|r| target_of(r) == canary_target),
        "no request reached {canary_target}"
    );
    let late: Vec<&Value> = records
        .iter()
        .filter(|r| r["t"].as_f64().unwrap_or(0.0) > promoted_at + 2.0)
        .collect();
    assert!(late.iter().all(|r| r["model"] == "good-v2"), "{late:?}");
    // Pods hold only the promoted adapter.
    let m = s.wait_for("pods to unload the old adapter", SHORT, || {
        get_mdep(&s).filter(|m| {
            m["status"]["pods"].as_array().is_some_and(|ps| {
                ps.len() == 2 && ps.iter().all(|p| p["loaded"] == json!(["good-v2"]))
            })
        })
    });
    assert_eq!(phase(&m), "Healthy");
    println!(
        "adapter canary: weights {weights:?}, {} requests, 0 errors",
        records.len()
    );
}

#[test]
fn faulty_adapter_canary_rolls_back_within_the_failure_limit_with_evidence() {
    let s = Scenario::new("e2e-canary-bad");
    let env = s.env;
    s.import_adapters(&["ok-v1", "faulty-v2"]);
    let (interval, failure_limit) = (3u64, 2u64);
    let rollout = json!({
        "steps": [{"weight": 50, "pause": "120s"}],
        "analysis": {"interval": format!("{interval}s"), "minRequests": 5, "maxErrorRate": 0.1, "maxErrorRateIncrease": 0.05, "failureLimit": failure_limit},
    });
    // TEST-ONLY: the faulty adapter fails 30% of its requests.
    let fault = json!({"tailor.dev/test-fault-injection": json!({"errorRate": 0.3, "adapters": ["faulty-v2"]}).to_string()});
    env.apply(&mdep(&s, "ok-v1", rollout, fault, 2).to_string())
        .expect("apply");
    let md = wait_ready(&s);
    let endpoint = md["status"]["endpoint"].as_str().expect("endpoint");
    let stable = md["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();

    let load = Load::start(endpoint, "support");
    set_adapter(&s, "faulty-v2");
    let rolled = s.wait_for("the faulty canary to be rolled back", LONG, || {
        get_mdep(&s).filter(|m| phase(m) == "RolledBack")
    });
    let seen_at = now_s();
    // The revision is not retried while the spec stays: watch a few analysis intervals.
    while now_s() < seen_at + (3 * interval) as f64 {
        let m = get_mdep(&s).expect("mdep");
        assert_eq!(phase(&m), "RolledBack", "{}", m["status"]);
        assert!(m["status"]["canaryRevision"].is_null(), "{}", m["status"]);
        assert_eq!(m["status"]["canaryWeight"], 0);
        std::thread::sleep(Duration::from_millis(500));
    }
    let records = load.stop();

    let st = &rolled["status"];
    assert_eq!(st["stableRevision"], stable.as_str());
    let rec = last_record(st);
    assert_eq!(rec["outcome"], "RolledBack", "{st}");
    let canary_rev = rec["revision"].as_str().unwrap_or("").to_string();
    let reason = rec["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("maxErrorRate") && reason.contains(&format!("{failure_limit} failed")),
        "{reason}"
    );
    let c = condition(&rolled, "RolledBack").expect("RolledBack condition");
    assert_eq!(c["status"], "True");
    assert_eq!(c["reason"], "AnalysisFailed");
    let a = &st["lastAnalysis"];
    assert_eq!(a["verdict"], "Fail", "{a}");
    assert!(
        a["canary"]["errorRate"].as_f64().unwrap_or(0.0) > 0.1,
        "{a}"
    );
    assert!(a["canary"]["requests"].as_u64().unwrap_or(0) >= 5, "{a}");
    assert_eq!(a["stable"]["errors"], 0, "{a}");
    let warning = s.events().into_iter().find(|e| {
        e["type"] == "Warning"
            && e["reason"] == "RolledBack"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains(&canary_rev) && m.contains("error rate"))
    });
    assert!(warning.is_some(), "a Warning Event with the evidence");

    // Stable users saw no error; the canary's did.
    let canary_target = format!("canary-{canary_rev}");
    let stable_errors: Vec<&Value> = errors(&records)
        .into_iter()
        .filter(|r| target_of(r) != canary_target)
        .collect();
    assert!(stable_errors.is_empty(), "{stable_errors:?}");
    assert!(
        records
            .iter()
            .any(|r| target_of(r) == canary_target && r["ok"] != true)
    );
    // Rolled back within (failureLimit + 1) × interval of the canary's first request, by the
    // operator's own clock (status times have second precision: one second of allowance).
    let first = records
        .iter()
        .filter(|r| target_of(r) == canary_target)
        .filter_map(|r| r["t"].as_f64())
        .fold(f64::MAX, f64::min);
    let rolled_back_at = unix(rec["time"].as_str().unwrap_or(""));
    let latency = rolled_back_at - first;
    let budget = ((failure_limit + 1) * interval) as f64;
    println!(
        "rollback {latency:.1}s after the canary's first request (budget (failureLimit+1)×interval = {budget}s); {} requests",
        records.len()
    );
    assert!(
        latency <= budget + 1.0,
        "rolled back {latency:.1}s after traffic reached the canary, budget {budget}s"
    );

    // A spec change moves on: back to the stable adapter clears RolledBack.
    set_adapter(&s, "ok-v1");
    let m = s.wait_for("RolledBack to clear after the spec changes", SHORT, || {
        get_mdep(&s).filter(|m| {
            phase(m) == "Healthy"
                && condition(m, "RolledBack").is_some_and(|c| c["status"] == "False")
        })
    });
    assert_eq!(m["status"]["stableRevision"], stable.as_str());
}

#[test]
fn equal_error_rates_pass_twenty_analysis_windows_without_rollback() {
    let s = Scenario::new("e2e-canary-equal");
    let env = s.env;
    s.import_adapters(&["same-v1", "same-v2"]);
    let interval = 2u64;
    // failureLimit 1: a single failed window would roll back.
    let rollout = json!({
        "steps": [{"weight": 50, "pause": format!("{}s", 20 * interval)}],
        "analysis": {"interval": format!("{interval}s"), "minRequests": 3, "maxErrorRate": 0.5, "maxErrorRateIncrease": 0.05, "failureLimit": 1},
    });
    let fault = json!({"tailor.dev/test-fault-injection": json!({"errorRate": 0.01, "adapters": ["same-v1", "same-v2"]}).to_string()});
    env.apply(&mdep(&s, "same-v1", rollout, fault, 2).to_string())
        .expect("apply");
    let md = wait_ready(&s);
    let endpoint = md["status"]["endpoint"].as_str().expect("endpoint");
    let stable = md["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let load = Load::start(endpoint, "support");
    set_adapter(&s, "same-v2");
    let mut analyses: BTreeSet<String> = BTreeSet::new();
    let mut verdicts: Vec<String> = vec![];
    let done = s.wait_for("the canary to finish its step", LONG, || {
        let m = get_mdep(&s)?;
        let a = &m["status"]["lastAnalysis"];
        if let Some(t) = a["time"].as_str()
            && analyses.insert(t.to_string())
        {
            verdicts.push(a["verdict"].as_str().unwrap_or("").to_string());
        }
        let ended = m["status"]["canaryRevision"].is_null()
            && m["status"]["stableRevision"] != stable.as_str();
        (ended || phase(&m) == "RolledBack").then_some(m)
    });
    let records = load.stop();
    assert_eq!(phase(&done), "Healthy", "{}", done["status"]);
    let rec = done["status"]["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(rec["outcome"], "Promoted", "{}", done["status"]);
    assert!(!verdicts.iter().any(|v| v == "Fail"), "{verdicts:?}");
    // Both sides did fail some requests, at the same rate.
    let errs = errors(&records).len();
    println!(
        "equal error rates: {} requests, {errs} errors, {} analyses observed ({verdicts:?})",
        records.len(),
        analyses.len()
    );
    // The step lasted 20 intervals, analysed every interval; polls see most windows.
    assert!(analyses.len() >= 10, "{verdicts:?}");
}

#[test]
fn operator_killed_mid_rollout_resumes_from_status() {
    let s = Scenario::new("e2e-canary-restart");
    let (env, ns) = (s.env, s.ns());
    s.import_adapters(&["resume-v1", "resume-v2"]);
    let rollout = json!({
        "steps": [{"weight": 30, "pause": "12s"}, {"weight": 60, "pause": "6s"}],
        "analysis": {"interval": "2s", "minRequests": 2, "maxErrorRate": 0.05, "maxErrorRateIncrease": 0.02, "failureLimit": 2},
    });
    env.apply(&mdep(&s, "resume-v1", rollout, json!({}), 1).to_string())
        .expect("apply");
    let md = wait_ready(&s);
    let endpoint = md["status"]["endpoint"].as_str().expect("endpoint");
    let stable = md["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let load = Load::start(endpoint, "support");
    set_adapter(&s, "resume-v2");
    let at_step = s.wait_for("the canary's first step", SHORT, || {
        get_mdep(&s).filter(|m| m["status"]["canaryWeight"] == 30)
    });
    let step_started = at_step["status"]["stepStartedAt"].clone();
    let op = env.ready_operator_pod();
    let op_name = op["metadata"]["name"].as_str().expect("operator pod");
    env.kubectl(&[
        "-n",
        "tailor-system",
        "delete",
        "pod",
        op_name,
        "--grace-period=0",
        "--wait=false",
    ])
    .expect("kill the operator");
    // While no operator runs and after a new one starts, the rollout never goes back.
    let mut seen: Vec<(u64, u64)> = vec![];
    let done = s.wait_for("the rollout to finish under the new operator", LONG, || {
        let m = get_mdep(&s)?;
        let st = &m["status"];
        if st["canaryRevision"].is_string() {
            let s = (
                st["currentStep"].as_u64().unwrap_or(99),
                st["canaryWeight"].as_u64().unwrap_or(0),
            );
            if seen.last() != Some(&s) {
                seen.push(s);
            }
            if st["currentStep"] == 0 {
                assert_eq!(st["stepStartedAt"], step_started, "step restarted");
            }
        }
        (st["stableRevision"] != stable.as_str()).then_some(m)
    });
    let new_op = env.ready_operator_pod();
    assert_ne!(new_op["metadata"]["name"], op_name);
    let records = load.stop();
    assert_eq!(seen, vec![(0, 30), (1, 60)], "steps and weights seen");
    let history = done["status"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let canary_rev = done["status"]["stableRevision"].as_str().unwrap_or("");
    let records_of_canary: Vec<&Value> = history
        .iter()
        .filter(|h| h["revision"] == canary_rev)
        .collect();
    assert_eq!(records_of_canary.len(), 1, "{history:?}");
    assert_eq!(records_of_canary[0]["outcome"], "Promoted");
    let started = s
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "CanaryStarted")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum::<u64>();
    assert_eq!(started, 1, "one CanaryStarted Event");
    let deploys = env
        .get_json(&[
            "-n",
            ns,
            "get",
            "deployments",
            "-l",
            "app.kubernetes.io/name=tailor-server",
        ])
        .expect("deployments");
    assert_eq!(deploys["items"].as_array().map(Vec::len), Some(1));
    assert!(errors(&records).is_empty(), "{:?}", errors(&records));
}

#[test]
fn pod_canaries_promote_a_server_change_and_roll_back_pods_that_never_get_ready() {
    let s = Scenario::new("e2e-pod-canary");
    let (env, ns) = (s.env, s.ns());
    s.import_adapters(&["pods-v1"]);
    let rollout = json!({
        "steps": [{"weight": 50, "pause": "4s"}],
        "analysis": {"interval": "2s", "minRequests": 2, "maxErrorRate": 0.05, "maxErrorRateIncrease": 0.02, "failureLimit": 2},
        "progressDeadlineSeconds": 20,
    });
    env.apply(&mdep(&s, "pods-v1", rollout, json!({}), 1).to_string())
        .expect("apply");
    let md = wait_ready(&s);
    let endpoint = md["status"]["endpoint"].as_str().expect("endpoint");
    let first = md["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let old_uids = serving_pod_uids(&s);
    let load = Load::start(endpoint, "support");

    // A server setting changes: a new Deployment, split by the router, then promoted.
    env.kubectl(&[
        "-n",
        ns,
        "patch",
        "modeldeployment",
        "support",
        "--type=merge",
        "-p",
        r#"{"spec":{"server":{"maxBatchSize":4}}}"#,
    ])
    .expect("patch");
    let promoted = s.wait_for("the pod canary to be promoted", LONG, || {
        get_mdep(&s)
            .filter(|m| m["status"]["stableRevision"] != first.as_str() && phase(m) == "Healthy")
    });
    let rec = last_record(&promoted["status"]);
    assert_eq!(rec["outcome"], "Promoted");
    assert_eq!(rec["kind"], "pod");
    let deploys = s.wait_for("the old revision's Deployment to go", SHORT, || {
        let d = env
            .get_json(&[
                "-n",
                ns,
                "get",
                "deployments",
                "-l",
                "app.kubernetes.io/name=tailor-server",
            ])
            .ok()?;
        (d["items"].as_array()?.len() == 1).then_some(d)
    });
    let args = deploys["items"][0]["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    let args: Vec<&str> = args
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--max-batch-size", "4"]),
        "{args:?}"
    );
    let new_uids = serving_pod_uids(&s);
    assert!(new_uids.is_disjoint(&old_uids), "new pods serve");
    let promoted_rev = promoted["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        load.records()
            .iter()
            .any(|r| target_of(r) == format!("canary-{promoted_rev}")),
        "the router split traffic to the new pods"
    );

    // A base model that does not exist: the canary's pods never get ready.
    env.kubectl(&[
        "-n",
        ns,
        "patch",
        "modeldeployment",
        "support",
        "--type=merge",
        "-p",
        r#"{"spec":{"baseModel":{"uri":"pvc://tailor-artifacts/models/does-not-exist"}}}"#,
    ])
    .expect("patch");
    let started = now_s();
    let rolled = s.wait_for(
        "the pod canary to be rolled back after its progress deadline",
        LONG,
        || get_mdep(&s).filter(|m| phase(m) == "RolledBack"),
    );
    let elapsed = now_s() - started;
    let c = condition(&rolled, "RolledBack").expect("RolledBack");
    assert_eq!(c["reason"], "ProgressDeadlineExceeded", "{c}");
    assert_eq!(rolled["status"]["stableRevision"], promoted_rev.as_str());
    assert!(
        elapsed >= 20.0 - 1.0,
        "not before the deadline: {elapsed:.1}s"
    );
    s.wait_for("the failed canary's Deployment to go", SHORT, || {
        let d = env
            .get_json(&[
                "-n",
                ns,
                "get",
                "deployments",
                "-l",
                "app.kubernetes.io/name=tailor-server",
            ])
            .ok()?;
        (d["items"].as_array()?.len() == 1).then_some(())
    });
    let records = load.stop();
    // Nobody was sent to pods that never got ready.
    assert!(errors(&records).is_empty(), "{:?}", errors(&records));
    let answers = ask(endpoint, &["support"]);
    assert_eq!(answers["support"]["model"], "pods-v1");
    println!(
        "pod canary: promoted, then rolled back {elapsed:.1}s after the bad change (deadline 20s); {} requests, 0 errors",
        records.len()
    );
}

/// A judge: a ModelDeployment serving the base model whose chat answers are fixed by the
/// server's TEST-ONLY fault injection (`verdicts` in turn).
fn judge(s: &Scenario, name: &str, verdicts: &[&str]) {
    let fixed: Vec<String> = verdicts
        .iter()
        .map(|w| json!({"winner": w, "reason": format!("{name} says {w}")}).to_string())
        .collect();
    let mut md = ModelDeployment::new(name, "judge-adapter")
        .annotations(json!({
            "tailor.dev/test-fault-injection": json!({"fixedResponses": fixed}).to_string()
        }))
        .manifest(s.ns());
    md["spec"]["adapters"] =
        json!([{"name": "judge-adapter", "adapterRef": {"name": "judge-adapter"}}]);
    s.apply(&md.to_string()).expect("apply judge");
}

#[test]
fn evaluated_adapters_feed_the_gate_which_blocks_a_loser_and_admits_a_winner() {
    let s = Scenario::new("e2e-eval-gate");
    let (env, ns) = (s.env, s.ns());
    s.import_adapters(&["stable-v1", "judge-adapter"]);
    // A Dataset with a test split.
    let mut body = String::new();
    for l in quickstart_examples() {
        body.push_str(&format!("      {l}\n"));
    }
    s.apply(&format!(
        "apiVersion: tailor.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: chat, namespace: {ns}}}\nspec:\n  format: chat\n  preparation:\n    minExamples: 10\n    split: {{validation: 0.2, test: 0.2}}\n  source:\n    inline: |\n{body}"
    ))
    .expect("apply Dataset");
    // Two judges: one that prefers the adapter whichever place it is shown in ("A" when it is
    // shown first, then "B" when it is second, one judgement at a time), one that always picks
    // the first answer (position bias: every pair a tie, no win).
    judge(&s, "judge-fair", &["A", "B"]);
    judge(&s, "judge-biased", &["A"]);
    for (job, judge) in [("winner", "judge-fair"), ("loser", "judge-biased")] {
        let mut y = FineTuneJob::new(job, "chat").yaml(ns);
        y.push_str(&format!(
            "  evaluation:\n    maxExamples: 4\n    decoding: {{maxNewTokens: 8}}\n    judge: {{modelDeploymentRef: {{name: {judge}}}, model: base, concurrency: 1}}\n"
        ));
        s.apply(&y)
            .unwrap_or_else(|e| panic!("apply FineTuneJob {job}: {e:#}"));
    }
    let mut saw_evaluating = false;
    for job in ["winner", "loser"] {
        s.wait_for(&format!("FineTuneJob {job} to be evaluated"), LONG, || {
            let o = s.object("finetunejob", job)?;
            saw_evaluating |= phase(&o) == "Evaluating";
            (phase(&o) == "Succeeded").then_some(())
        });
    }
    assert!(
        saw_evaluating,
        "the phase said Evaluating while the evaluate Job ran"
    );
    let win_rate = |job: &str| {
        let o = s.object("finetunejob", job).expect("job");
        let e = &o["status"]["evaluation"];
        assert_eq!(e["examples"], 4, "{e}");
        assert!(
            e["base"]["testLoss"].is_number() && e["adapter"]["perplexity"].is_number(),
            "{e}"
        );
        assert_eq!(e["judge"]["judged"], 4, "{e}");
        let c = condition(&o, "Evaluated").expect("Evaluated");
        assert_eq!(c["status"], "True", "{c}");
        // The LoraAdapter's lineage carries the same report.
        let la = s.object("loraadapter", job).expect("adapter");
        assert_eq!(la["status"]["lineage"]["evaluation"], *e, "{la}");
        e["judge"]["winRate"].as_f64().expect("winRate")
    };
    assert_eq!(win_rate("winner"), 1.0);
    assert_eq!(win_rate("loser"), 0.0);

    // The deployment's gate: a win rate of at least 0.6 before any traffic.
    let rollout = json!({
        "steps": [{"weight": 50, "pause": "2s"}],
        "analysis": {"interval": "2s", "minRequests": 1},
        "gate": {"minWinRate": 0.6},
    });
    env.apply(&mdep(&s, "stable-v1", rollout, json!({}), 1).to_string())
        .expect("apply");
    let md = wait_ready(&s);
    let stable = md["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();
    set_adapter(&s, "loser");
    let mut max_weight = 0;
    let rolled = s.wait_for("the loser's canary to be refused", LONG, || {
        let m = get_mdep(&s)?;
        max_weight = max_weight.max(m["status"]["canaryWeight"].as_u64().unwrap_or(0));
        (phase(&m) == "RolledBack").then_some(m)
    });
    assert_eq!(max_weight, 0, "the refused canary never took traffic");
    let st = &rolled["status"];
    assert_eq!(st["stableRevision"], stable.as_str());
    let rec = last_record(st);
    assert_eq!(rec["outcome"], "RolledBack", "{st}");
    let reason = rec["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(
            "loser: win rate 0.000 over 4 judged pairs is below rollout.gate.minWinRate 0.6"
        ),
        "{reason}"
    );
    let c = condition(&rolled, "RolledBack").expect("RolledBack");
    assert_eq!(c["reason"], "GateFailed", "{c}");
    let event = s.events().into_iter().find(|e| {
        e["type"] == "Warning"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("rollout.gate.minWinRate"))
    });
    assert!(event.is_some(), "a Warning Event says why the gate blocked");

    // The winner passes the gate, takes traffic (analysis needs requests) and is promoted.
    let endpoint = md["status"]["endpoint"].as_str().expect("endpoint");
    let load = Load::start(endpoint, "support");
    set_adapter(&s, "winner");
    s.wait_for("the winner's canary to be promoted", LONG, || {
        let m = get_mdep(&s)?;
        let promoted = m["status"]["stableRevision"] != stable.as_str() && phase(&m) == "Healthy";
        promoted.then_some(())
    });
    let records = load.stop();
    assert!(errors(&records).is_empty(), "{:?}", errors(&records));
    let m = get_mdep(&s).expect("mdep");
    let served: Vec<&str> = m["status"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["loaded"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(served.contains(&"winner"), "{}", m["status"]);
}

#[test]
fn autoscaling_adds_pods_under_load_and_removes_them_after_without_errors() {
    let s = Scenario::new("e2e-autoscale");
    let env = s.env;
    s.import_adapters(&["good-v1", "good-v2"]);
    let rollout = json!({
        "steps": [{"weight": 25, "pause": "4s"}, {"weight": 50, "pause": "4s"}],
        "analysis": {"interval": "2s", "minRequests": 2, "maxErrorRate": 0.05, "maxErrorRateIncrease": 0.02, "failureLimit": 2},
    });
    let mut md = mdep(&s, "good-v1", rollout, json!({}), 1);
    // Paced for a test: a decision every 2 s, no up-window, a 15 s down-window. The load
    // client keeps 4 requests in flight: well above half a request per pod.
    md["spec"]["autoscaling"] = json!({
        "minReplicas": 1, "maxReplicas": 3, "targetInFlightPerReplica": 0.5,
        "scaleUpStabilization": "0s", "scaleDownStabilization": "15s", "interval": "2s",
    });
    env.apply(&md.to_string()).expect("apply");
    let md = wait_ready(&s);
    assert_eq!(md["status"]["replicas"], 1, "{}", md["status"]);
    let stable = md["status"]["stableRevision"].clone();
    let endpoint = md["status"]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();

    let load = Load::start(&endpoint, "support");
    // An adapter canary while the pods are being added: it still steps and is promoted.
    set_adapter(&s, "good-v2");
    let promoted = s.wait_for("the canary to be promoted while scaling", LONG, || {
        get_mdep(&s).filter(|m| {
            m["status"]["stableRevision"] != stable
                && m["status"]["canaryRevision"].is_null()
                && phase(m) == "Healthy"
        })
    });
    let last = &promoted["status"]["history"][promoted["status"]["history"]
        .as_array()
        .map_or(0, |h| h.len().saturating_sub(1))];
    assert_eq!(last["outcome"], "Promoted", "{}", promoted["status"]);
    let stable = promoted["status"]["stableRevision"].clone();
    let up = s.wait_for("three ready serving pods under load", LONG, || {
        get_mdep(&s).filter(|m| m["status"]["replicas"] == 3)
    });
    let a = &up["status"]["autoscaling"];
    assert_eq!(a["desiredReplicas"], 3, "{a}");
    assert!(a["measuredPods"].as_u64().unwrap_or(0) >= 1, "{a}");
    assert!(
        a["message"]
            .as_str()
            .is_some_and(|m| m.contains("in-flight requests")),
        "{a}"
    );
    // Scaling is not a rollout.
    assert_eq!(up["status"]["stableRevision"], stable);
    // Some more requests served by the three pods before the load stops.
    let served = load.records().len();
    s.wait_for("more requests with three pods", SHORT, || {
        (load.records().len() >= served + 20).then_some(())
    });
    let records = load.stop();
    let failed = errors(&records);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while scaling up: {:?}",
        failed.len(),
        records.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );

    // No load: back to one pod once the down-window has passed, half at a time.
    let down = s.wait_for("one serving pod after the load", LONG, || {
        get_mdep(&s).filter(|m| {
            m["status"]["autoscaling"]["desiredReplicas"] == 1 && m["status"]["replicas"] == 1
        })
    });
    assert_eq!(down["status"]["stableRevision"], stable);
    assert_eq!(phase(&down), "Healthy");
    // Each direction is an Event with the decision's inputs.
    for (reason, says) in [("ScaledUp", "scale up"), ("ScaledDown", "scale down")] {
        let events = env
            .get_json(&[
                "-n",
                s.ns(),
                "get",
                "events",
                "--field-selector",
                &format!("reason={reason}"),
            ])
            .expect("events");
        let notes: Vec<&str> = events["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|e| e["message"].as_str().or(e["note"].as_str()))
            .collect();
        assert!(
            notes
                .iter()
                .any(|n| n.contains(says) && n.contains("in-flight requests")),
            "{reason}: {notes:?}"
        );
    }
}

/// issue 19: `runtime: vllm`. The operator renders the Deployment vLLM needs (`vllm serve` with
/// its LoRA, parallelism and key settings) and drives adapters through the runtime LoRA API;
/// on tailor-sim the `vllm/vllm-openai` image runs tailor-server standing in for vLLM, which
/// takes only vLLM's flags and answers with vLLM's routes. The same canaries run on it: a good
/// adapter is promoted on the same pods, a faulty one rolled back.
#[test]
fn runtime_vllm_promotes_and_rolls_back_adapter_canaries_through_the_lora_api() {
    let s = Scenario::new("e2e-vllm");
    let env = s.env;
    s.import_adapters(&["good-v1", "good-v2", "faulty-v3"]);
    let rollout = json!({
        "steps": [{"weight": 50, "pause": "6s"}],
        "analysis": {"interval": "3s", "minRequests": 5, "maxErrorRate": 0.1, "maxErrorRateIncrease": 0.05, "failureLimit": 2},
    });
    let mut m = mdep(&s, "good-v1", rollout, json!({}), 2);
    m["spec"]["runtime"] = json!("vllm");
    // TEST-ONLY: the stand-in fails 30% of faulty-v3's requests (tailor-server's own fault
    // variables, set from the start: the pods never change).
    m["spec"]["server"]["podTemplate"] = json!({"env": [
        {"name": "TAILOR_SERVER_FAULT_ERROR_RATE", "value": "0.3"},
        {"name": "TAILOR_SERVER_FAULT_ADAPTERS", "value": "faulty-v3"},
    ]});
    env.apply(&m.to_string()).expect("apply");
    let md = wait_ready(&s);
    let endpoint = md["status"]["endpoint"].as_str().expect("endpoint");
    let first_stable = md["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();

    // The Deployment is vLLM's.
    let deps = s
        .get_json(&["deployments", "-l", "app.kubernetes.io/name=tailor-server"])
        .expect("deployments");
    let c = &deps["items"][0]["spec"]["template"]["spec"]["containers"][0];
    assert!(
        c["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("vllm/vllm-openai:")),
        "{c}"
    );
    assert_eq!(c["command"], json!(["vllm", "serve"]));
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for pair in [
        ["--max-lora-rank", "16"],
        ["--max-loras", "4"],
        ["--max-model-len", "256"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert!(args.contains(&"--enable-lora"), "{args:?}");
    assert!(
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| { e["name"] == "VLLM_ALLOW_RUNTIME_LORA_UPDATING" && e["value"] == "True" }),
        "{c}"
    );
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/health");
    // The adapter went on through the LoRA API (vLLM has no config file to read it from).
    let pods = md["status"]["pods"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 2, "{}", md["status"]);
    assert!(
        pods.iter().all(|p| p["loaded"] == json!(["good-v1"])),
        "{pods:?}"
    );
    let uids = serving_pod_uids(&s);

    let load = Load::start(endpoint, "support");
    // A good adapter: promoted on the same pods.
    set_adapter(&s, "good-v2");
    let promoted = s.wait_for("the good canary to be promoted", LONG, || {
        get_mdep(&s).filter(|m| {
            m["status"]["stableRevision"] != first_stable.as_str() && phase(m) == "Healthy"
        })
    });
    let rec = last_record(&promoted["status"]);
    assert_eq!(rec["outcome"], "Promoted", "{rec}");
    assert_eq!(rec["kind"], "adapter", "{rec}");
    let stable = promoted["status"]["stableRevision"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // A faulty one: rolled back by analysis.
    set_adapter(&s, "faulty-v3");
    let rolled = s.wait_for("the faulty canary to be rolled back", LONG, || {
        get_mdep(&s).filter(|m| phase(m) == "RolledBack")
    });
    let records = load.stop();
    let st = &rolled["status"];
    assert_eq!(st["stableRevision"], stable.as_str());
    let rec = last_record(st);
    assert_eq!(rec["outcome"], "RolledBack", "{st}");
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|r| r.contains("maxErrorRate")),
        "{rec}"
    );
    // Only the faulty canary's users saw errors; no pod was replaced throughout.
    let canary_target = format!("canary-{}", rec["revision"].as_str().unwrap_or(""));
    let others: Vec<&Value> = errors(&records)
        .into_iter()
        .filter(|r| target_of(r) != canary_target)
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(serving_pod_uids(&s), uids, "serving pods changed");
    // The rolled-back adapter is unloaded through the LoRA API.
    s.wait_for("pods to hold only the stable adapter", SHORT, || {
        get_mdep(&s).filter(|m| {
            m["status"]["pods"].as_array().is_some_and(|ps| {
                ps.len() == 2 && ps.iter().all(|p| p["loaded"] == json!(["good-v2"]))
            })
        })
    });
    println!(
        "runtime vllm: promoted then rolled back on the same pods, {} requests",
        records.len()
    );
}
