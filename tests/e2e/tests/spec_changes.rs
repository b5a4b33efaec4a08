//! FineTuneJob spec changes after the run ended, or to an invalid spec, against the operator in
//! tailor-sim (or the cluster of `TAILOR_E2E_KUBECONFIG`):
//! - after `Failed`, a changed spec starts a new run (the failed Job deleted, attempts from 0);
//! - after `Succeeded`, admission refuses a spec change (`suspend` aside);
//! - a change to a spec the operator cannot run cancels the running attempt and says why;
//! - an object the operator cannot read is a condition and an Event, and its neighbours go on.

use std::time::Duration;

use tailor_e2e::{Env, FineTuneJob, Scenario, condition, phase};

const LONG: Duration = Duration::from_secs(420);
const SHORT: Duration = Duration::from_secs(120);

/// Names of the (not deleting) train Jobs of a FineTuneJob.
fn train_jobs(env: &Env, ns: &str, ftj: &str) -> Vec<String> {
    let jobs = env
        .get_json(&[
            "-n",
            ns,
            "get",
            "jobs",
            "-l",
            &format!("tailor.dev/finetunejob={ftj}"),
        ])
        .expect("jobs");
    jobs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|j| j["metadata"]["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_failed_job_reruns_on_a_spec_change_and_a_succeeded_ones_spec_is_frozen() {
    let t0 = std::time::Instant::now();
    let at = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    let s = Scenario::new("e2e-after-end");
    let (env, ns) = (s.env, s.ns());
    s.quickstart_dataset("data", 24);
    // A base model that is not there: each trainer pod fails at once; one retry, then Failed.
    s.job(
        &FineTuneJob::new("rerun", "data")
            .base_model("pvc://tailor-artifacts/models/missing")
            .backoff_limit(1),
    );
    at("cluster up");
    let failed = s.wait_phase("finetunejob", "rerun", "Failed", LONG);
    at("Failed");
    let st = &failed["status"];
    let ready = condition(&failed, "Ready").expect("Ready");
    assert_eq!(ready["reason"], "JobFailed", "{st}");
    assert_eq!(st["attempts"], 2, "a first try and one retry: {st}");
    let failed_job = st["jobName"].as_str().expect("jobName").to_string();

    // The fix: a new run for the new generation, from scratch.
    s.merge_patch(
        "finetunejob",
        "rerun",
        r#"{"spec":{"baseModel":{"uri":"pvc://tailor-artifacts/models/base"}}}"#,
    )
    .expect("fix the base model");
    let done = s.wait_phase("finetunejob", "rerun", "Succeeded", LONG);
    at("Succeeded after the fix");
    let st = &done["status"];
    assert_eq!(
        st["observedGeneration"], done["metadata"]["generation"],
        "{st}"
    );
    let new_job = st["jobName"].as_str().expect("jobName").to_string();
    assert_ne!(new_job, failed_job, "a new run: {st}");
    assert_eq!(st["attempts"], 1, "attempts start again: {st}");
    assert_eq!(
        train_jobs(env, ns, "rerun"),
        vec![new_job.clone()],
        "the failed Job was replaced"
    );
    let events = env.get_json(&["-n", ns, "get", "events"]).expect("events");
    let why = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["reason"] == "SpecChanged" && e["involvedObject"]["name"] == "rerun")
        .unwrap_or_else(|| panic!("a SpecChanged event: {events}"));
    let msg = why["message"].as_str().unwrap_or("");
    assert!(msg.contains("failed") && msg.contains(&failed_job), "{why}");
    let la = s.wait_for("the LoraAdapter of the new run", SHORT, || {
        env.object(ns, "loraadapter", "rerun")
            .filter(|o| phase(o) == "Ready")
    });
    let uri = la["spec"]["uri"].as_str().expect("uri").to_string();

    // Succeeded: the spec its adapter records is frozen. Admission says what to do instead.
    let err = s
        .merge_patch(
            "finetunejob",
            "rerun",
            r#"{"spec":{"hyperparameters":{"epochs":2}}}"#,
        )
        .expect_err("a Succeeded job's spec is frozen");
    assert!(
        err.to_string().contains("create a new FineTuneJob"),
        "{err}"
    );
    let f = env.object(ns, "finetunejob", "rerun").expect("ftj");
    assert_eq!(f["spec"]["hyperparameters"]["epochs"], 1);
    assert_eq!(f["metadata"]["generation"], done["metadata"]["generation"]);
    // suspend may still change: the run stands, the generation is observed.
    s.merge_patch("finetunejob", "rerun", r#"{"spec":{"suspend":true}}"#)
        .expect("suspend is allowed");
    let f = s.wait_for("the suspend generation to be observed", SHORT, || {
        env.object(ns, "finetunejob", "rerun")
            .filter(|o| o["status"]["observedGeneration"] == o["metadata"]["generation"])
    });
    assert_eq!(phase(&f), "Succeeded");
    assert!(condition(&f, "Ready").is_some_and(|c| c["status"] == "True"));
    assert!(condition(&f, "Degraded").is_some_and(|c| c["status"] == "False"));
    assert_eq!(f["status"]["jobName"], new_job.as_str());
    let la = env.object(ns, "loraadapter", "rerun").expect("adapter");
    assert_eq!(la["spec"]["uri"], uri.as_str());
}

#[test]
fn a_change_to_a_spec_the_operator_cannot_run_cancels_the_running_attempt() {
    let t0 = std::time::Instant::now();
    let at = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    let s = Scenario::new("e2e-invalid-mid-run");
    let (env, ns) = (s.env, s.ns());
    s.quickstart_dataset("data", 60);
    // Epochs enough to be still running when the spec changes (the change cancels it).
    s.job(&FineTuneJob::new("moved", "data").epochs(1000));
    at("cluster up");
    let running = s.wait_phase("finetunejob", "moved", "Running", LONG);
    at("Running");
    let old_job = running["status"]["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    // Admitted (a well-formed URI), but a node path this cluster's operator config does not
    // allow (allowFileUris is off).
    s.merge_patch(
        "finetunejob",
        "moved",
        r#"{"spec":{"baseModel":{"uri":"file:///models/llama-3.2-1b"}}}"#,
    )
    .expect("admitted");
    let f = s.wait_phase("finetunejob", "moved", "Failed", SHORT);
    at("Failed on the invalid spec");
    let ready = condition(&f, "Ready").expect("Ready");
    assert_eq!(ready["reason"], "InvalidSpec", "{}", f["status"]);
    let msg = ready["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("spec.baseModel.uri") && msg.contains(&old_job),
        "says what is wrong and which attempt it cancelled: {msg}"
    );
    assert_eq!(
        f["status"]["observedGeneration"],
        f["metadata"]["generation"]
    );
    s.wait_for("the cancelled attempt's Job and pods to go", SHORT, || {
        let pods = env
            .get_json(&[
                "-n",
                ns,
                "get",
                "pods",
                "-l",
                "tailor.dev/finetunejob=moved",
            ])
            .ok()?;
        let live = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count();
        (train_jobs(env, ns, "moved").is_empty() && live == 0).then_some(())
    });
}

#[test]
fn a_finetunejob_the_operator_cannot_read_is_a_condition_and_its_neighbours_go_on() {
    let s = Scenario::new("e2e-malformed-object");
    let ns = s.ns();
    s.quickstart_dataset("data", 24);
    // `podTemplate.affinity` is an open object in the CRD (kept small enough for client-side
    // apply), so a wrong shape inside it is admitted and does not deserialize: an object the
    // operator cannot read, as one stored before a schema change would be.
    let suspended = |name: &str| {
        format!(
            "{}  suspend: true\n",
            FineTuneJob::new(name, "data").yaml(ns)
        )
    };
    let bad = format!(
        "{}  podTemplate:\n    affinity: {{nodeAffinity: not-an-object}}\n",
        suspended("unreadable")
    );
    s.apply(&format!(
        "{bad}---\n{}---\n{}",
        suspended("good-1"),
        suspended("good-2")
    ))
    .expect("all three are admitted");
    for good in ["good-1", "good-2"] {
        s.wait_phase("finetunejob", good, "Queued", SHORT);
    }
    let f = s.wait_for("the unreadable job's InvalidSpec condition", SHORT, || {
        s.object("finetunejob", "unreadable")
            .filter(|f| condition(f, "Ready").is_some_and(|c| c["reason"] == "InvalidSpec"))
    });
    let msg = condition(&f, "Ready").expect("Ready")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("could not be read") && msg.contains("not-an-object"),
        "names what could not be read: {msg}"
    );
    assert_eq!(
        f["status"]["observedGeneration"],
        f["metadata"]["generation"]
    );
    // Events are published in the background: the condition may be first.
    s.wait_for(
        "an InvalidSpec Event about the unreadable job",
        SHORT,
        || {
            s.events().into_iter().find(|e| {
                e["involvedObject"]["name"] == "unreadable" && e["reason"] == "InvalidSpec"
            })
        },
    );
    // Fixed, it is read and runs like its neighbours.
    s.merge_patch(
        "finetunejob",
        "unreadable",
        r#"{"spec":{"podTemplate":{"affinity":null}}}"#,
    )
    .expect("patched");
    s.wait_phase("finetunejob", "unreadable", "Queued", SHORT);
}
