//! The Job controller: pods from the template with the labels and owner reference Kubernetes
//! sets, parallelism/completions, backoffLimit, activeDeadlineSeconds, suspend, and the
//! SuccessCriteriaMet/Complete and FailureTarget/Failed conditions.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::cluster::{Cluster, DeleteOpts, WriteOpts, now};
use crate::controllers::{is_controlled_by, owner_ref, set_condition};

fn parse_ts(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn cond_true(o: &Value, t: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == t && c["status"] == "True")
}

pub fn pod_from_template(template: &Value, ns: &str, generate_name: &str, owner: &Value) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": generate_name, "namespace": ns}, "spec": template["spec"].clone()});
    for k in ["labels", "annotations"] {
        if template["metadata"][k].is_object() {
            pod["metadata"][k] = template["metadata"][k].clone();
        }
    }
    pod["metadata"]["ownerReferences"] = json!([owner_ref(owner, true)]);
    pod
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

pub fn reconcile(cluster: &Arc<Cluster>) {
    let (Ok(job_rt), Ok(pod_rt)) = (cluster.rt("batch", "jobs"), cluster.rt("", "pods")) else {
        return;
    };
    let (jobs, _) = cluster.store.list(&job_rt.gr(), None);
    if jobs.is_empty() {
        return;
    }
    let (pods, _) = cluster.store.list(&pod_rt.gr(), None);
    for job in jobs {
        if !job["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let ns = job["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
        let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let mine: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| p["metadata"]["namespace"] == json!(ns) && is_controlled_by(p, &uid))
            .collect();
        let phase = |p: &Value| p["status"]["phase"].as_str().unwrap_or("").to_string();
        let active: Vec<&&Arc<Value>> = mine
            .iter()
            .filter(|p| {
                !matches!(phase(p).as_str(), "Succeeded" | "Failed")
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        let terminating = mine
            .iter()
            .filter(|p| {
                !p["metadata"]["deletionTimestamp"].is_null()
                    && !matches!(phase(p).as_str(), "Succeeded" | "Failed")
            })
            .count();
        let succeeded = mine.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = mine.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let spec = &job["spec"];
        let completions = spec["completions"].as_i64().unwrap_or(1);
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
        let backoff = spec["backoffLimit"].as_i64().unwrap_or(6);
        let suspended = spec["suspend"].as_bool() == Some(true);
        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        let finished = cond_true(&job, "Complete") || cond_true(&job, "Failed");
        let kill_active = |reason: &str| {
            for p in &active {
                let _ = cluster.delete(
                    &pod_rt,
                    &ns,
                    p["metadata"]["name"].as_str().unwrap_or(""),
                    &DeleteOpts::default(),
                );
                tracing::info!(job = %name, pod = ?p["metadata"]["name"], reason, "terminating job pod");
            }
        };
        if !finished {
            if suspended {
                kill_active("JobSuspended");
                set_condition(
                    &mut conds,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                );
                if let Some(m) = status.as_object_mut() {
                    m.remove("startTime");
                }
            } else {
                if conds.iter().any(|c| c["type"] == "Suspended") {
                    set_condition(
                        &mut conds,
                        "Suspended",
                        "False",
                        "JobResumed",
                        "Job resumed",
                    );
                }
                if status["startTime"].is_null() {
                    status["startTime"] = json!(now());
                }
                let started = parse_ts(&status["startTime"]);
                let deadline_hit = spec["activeDeadlineSeconds"]
                    .as_i64()
                    .zip(started)
                    .is_some_and(|(ads, s)| (chrono::Utc::now() - s).num_seconds() >= ads);
                if deadline_hit {
                    kill_active("DeadlineExceeded");
                    set_condition(
                        &mut conds,
                        "FailureTarget",
                        "True",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    );
                    set_condition(
                        &mut conds,
                        "Failed",
                        "True",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    );
                } else if failed > backoff {
                    kill_active("BackoffLimitExceeded");
                    set_condition(
                        &mut conds,
                        "FailureTarget",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    );
                    set_condition(
                        &mut conds,
                        "Failed",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    );
                } else if succeeded >= completions {
                    kill_active("Completed");
                    set_condition(
                        &mut conds,
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    );
                    set_condition(
                        &mut conds,
                        "Complete",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    );
                    status["completionTime"] = json!(now());
                } else {
                    let want = parallelism.min(completions - succeeded) - active.len() as i64;
                    // Exponential back-off after failures (1s, 2s, 4s ... capped at 10s; the real
                    // controller starts at 10s, shortened so tests stay quick).
                    let last_fail = mine
                        .iter()
                        .filter(|p| phase(p) == "Failed")
                        .filter_map(|p| {
                            p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
                                .as_str()
                                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        })
                        .max();
                    let delay = if failed > 0 {
                        (1i64 << (failed - 1).min(4)).min(10)
                    } else {
                        0
                    };
                    let backing_off = last_fail.is_some_and(|t| {
                        (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() < delay
                    });
                    if want > 0 && !backing_off && terminating == 0 {
                        for _ in 0..want {
                            let pod = pod_from_template(
                                &spec["template"],
                                &ns,
                                &format!("{name}-"),
                                &job,
                            );
                            if let Err(e) = cluster.create(
                                &pod_rt,
                                &ns,
                                pod,
                                &WriteOpts::system("job-controller"),
                            ) {
                                tracing::warn!(job = %name, error = %e, "creating job pod");
                            }
                        }
                    }
                }
            }
        }
        status["active"] = json!(if finished || suspended {
            0
        } else {
            active.len()
        });
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["ready"] = json!(ready);
        status["terminating"] = json!(terminating);
        status["uncountedTerminatedPods"] = json!({});
        if !conds.is_empty() {
            status["conditions"] = Value::Array(conds);
        }
        for k in ["active", "succeeded", "failed"] {
            if status[k] == json!(0)
                && let Some(m) = status.as_object_mut()
            {
                m.remove(k);
            }
        }
        if status != job["status"] {
            let mut n = (*job).clone();
            n["status"] = status;
            let _ = cluster.update(&job_rt, &ns, &name, n, &WriteOpts::status("job-controller"));
        }
    }
}
