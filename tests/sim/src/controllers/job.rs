//! The Job controller: pods from the template with the labels and owner reference Kubernetes
//! sets; NonIndexed and Indexed completion (the completion index as annotation and label,
//! `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`, `completedIndexes`); parallelism and
//! completions; `backoffLimit`, and `backoffLimitPerIndex` with `failedIndexes` and
//! `maxFailedIndexes` (a pod deleted before it succeeded is a failure, as the controller's pod
//! tracking counts it; failures of pods already gone are not remembered); `podFailurePolicy`
//! (FailJob, FailIndex, Ignore, Count, on exit codes and pod conditions); `activeDeadlineSeconds`; `suspend`; and the SuccessCriteriaMet/Complete and
//! FailureTarget/Failed conditions with the controller's reasons and messages.
//!
//! Each pass plans every Job from its pods ([`plan`], pure), then writes: pods to create,
//! active pods to terminate, the status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::cluster::{Cluster, DeleteOpts, WriteOpts};
use crate::controllers::{create_pods, is_controlled_by, owner_ref, set_condition};

/// The completion index of a pod of an Indexed Job (annotation and label).
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";

fn parse_ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
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

/// A pod of the Job, for `index` when it is Indexed: the index as annotation and label, the
/// hostname `<job>-<index>`, and `JOB_COMPLETION_INDEX` in every container (unless set).
fn job_pod(job: &Value, index: Option<i64>) -> Value {
    let ns = job["metadata"]["namespace"].as_str().unwrap_or("");
    let name = job["metadata"]["name"].as_str().unwrap_or("");
    let Some(i) = index else {
        return pod_from_template(&job["spec"]["template"], ns, &format!("{name}-"), job);
    };
    let mut pod = pod_from_template(&job["spec"]["template"], ns, &format!("{name}-{i}-"), job);
    pod["metadata"]["annotations"][INDEX_KEY] = json!(i.to_string());
    pod["metadata"]["labels"][INDEX_KEY] = json!(i.to_string());
    pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            let has = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "JOB_COMPLETION_INDEX");
            if !has {
                if !c["env"].is_array() {
                    c["env"] = json!([]);
                }
                if let Some(env) = c["env"].as_array_mut() {
                    env.push(
                        json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef":
                        {"fieldPath": format!("metadata.labels['{INDEX_KEY}']")}}}),
                    );
                }
            }
        }
    }
    pod
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn pod_index(p: &Value) -> Option<i64> {
    p["metadata"]["annotations"][INDEX_KEY]
        .as_str()
        .and_then(|s| s.parse().ok())
        .filter(|i: &i64| *i >= 0)
}

/// What a failed pod does to its Job (podFailurePolicy rule actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    FailJob,
    FailIndex,
    Ignore,
    Count,
}

impl Action {
    fn parse(s: &str) -> Action {
        match s {
            "FailJob" => Action::FailJob,
            "FailIndex" => Action::FailIndex,
            "Ignore" => Action::Ignore,
            _ => Action::Count,
        }
    }
}

/// The first podFailurePolicy rule a failed pod matches, as the Job controller evaluates them,
/// with its message; `Count` when none does.
pub fn failure_action(spec: &Value, pod: &Value) -> (Action, String) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let pname = pod["metadata"]["name"].as_str().unwrap_or("");
    for (i, rule) in spec["podFailurePolicy"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let action = rule["action"].as_str().unwrap_or("Count");
        if let Some(on) = rule["onExitCodes"].as_object() {
            let want_container = on.get("containerName").and_then(Value::as_str);
            let values: Vec<i64> = on
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            let not_in = on.get("operator").and_then(Value::as_str) == Some("NotIn");
            let statuses = ["initContainerStatuses", "containerStatuses"]
                .iter()
                .flat_map(|k| pod["status"][*k].as_array().into_iter().flatten());
            for cs in statuses {
                let cname = cs["name"].as_str().unwrap_or("");
                if want_container.is_some_and(|w| w != cname) {
                    continue;
                }
                let Some(code) = cs["state"]["terminated"]["exitCode"].as_i64() else {
                    continue;
                };
                if code == 0 {
                    continue;
                }
                if values.contains(&code) != not_in {
                    return (
                        Action::parse(action),
                        format!(
                            "Container {cname} for pod {ns}/{pname} failed with exit code {code} matching {action} rule at index {i}"
                        ),
                    );
                }
            }
        }
        for pc in rule["onPodConditions"].as_array().into_iter().flatten() {
            let t = pc["type"].as_str().unwrap_or("");
            let want = pc["status"].as_str().unwrap_or("True");
            let has = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == t && c["status"] == want);
            if has {
                return (
                    Action::parse(action),
                    format!(
                        "Pod {ns}/{pname} has condition {t} matching {action} rule at index {i}"
                    ),
                );
            }
        }
    }
    (Action::Count, String::new())
}

/// `0-2,5` for {0, 1, 2, 5}, as the controller writes completedIndexes and failedIndexes.
pub fn compress(indexes: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = vec![];
    let mut it = indexes.iter().copied().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&(last + 1)) {
            last += 1;
            it.next();
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    out.join(",")
}

/// What one pass does for one Job.
#[derive(Debug, Default)]
pub struct Plan {
    /// Pods to create: None for a NonIndexed Job, the index for an Indexed one.
    pub create: Vec<Option<i64>>,
    /// Names of active pods to terminate.
    pub terminate: Vec<String>,
    pub status: Value,
}

/// Plan a pass over a Job and the pods it controls, at `now`.
pub fn plan(job: &Value, pods: &[&Value], now: DateTime<Utc>) -> Plan {
    let spec = &job["spec"];
    let indexed = spec["completionMode"].as_str() == Some("Indexed");
    let completions = spec["completions"].as_i64().unwrap_or(1);
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let per_index = spec["backoffLimitPerIndex"].as_i64().filter(|_| indexed);
    let suspended = spec["suspend"].as_bool() == Some(true);
    let terminal = |p: &Value| {
        matches!(
            p["status"]["phase"].as_str(),
            Some("Succeeded") | Some("Failed")
        )
    };
    let deleting = |p: &Value| !p["metadata"]["deletionTimestamp"].is_null();
    let active: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|p| !terminal(p) && !deleting(p))
        .collect();
    let terminating = pods.iter().filter(|p| !terminal(p) && deleting(p)).count();
    let succeeded: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|p| p["status"]["phase"] == "Succeeded")
        .collect();
    // The controller's isPodFailed: a pod deleted before it succeeded counts as failed at once
    // (its tracking finalizer keeps it from going unseen), unless only terminal pods count
    // (podReplacementPolicy Failed, or a podFailurePolicy to match). Pods stopped for a
    // suspension are not failures.
    let only_terminal =
        spec["podReplacementPolicy"] == "Failed" || spec["podFailurePolicy"].is_object();
    let is_failed = |p: &Value| {
        p["status"]["phase"] == "Failed"
            || (!only_terminal && !suspended && deleting(p) && p["status"]["phase"] != "Succeeded")
    };
    let failed: Vec<(&Value, Action, String)> = pods
        .iter()
        .copied()
        .filter(|p| is_failed(p))
        .map(|p| {
            let (a, m) = failure_action(spec, p);
            (p, a, m)
        })
        .collect();
    let counted: Vec<&(&Value, Action, String)> =
        failed.iter().filter(|f| f.1 != Action::Ignore).collect();
    let valid = |i: &i64| *i < completions;
    let completed: BTreeSet<i64> = succeeded
        .iter()
        .filter_map(|p| pod_index(p))
        .filter(valid)
        .collect();
    // Per-index failures (backoffLimitPerIndex): an index fails past its limit or on FailIndex.
    let mut failures_at: BTreeMap<i64, i64> = BTreeMap::new();
    let mut failed_indexes = BTreeSet::new();
    if let Some(limit) = per_index {
        for (p, action, _) in &counted {
            let Some(i) = pod_index(p).filter(valid) else {
                continue;
            };
            let n = failures_at.entry(i).or_default();
            *n += 1;
            if *action == Action::FailIndex || *n > limit {
                failed_indexes.insert(i);
            }
        }
    }

    let mut status = if job["status"].is_object() {
        job["status"].clone()
    } else {
        json!({})
    };
    let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let finished = cond_true(job, "Complete") || cond_true(job, "Failed");
    let mut out = Plan::default();
    let names = |ps: &[&Value]| -> Vec<String> {
        ps.iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    fn fail(conds: &mut Vec<Value>, reason: &str, message: &str) {
        set_condition(conds, "FailureTarget", "True", reason, message);
        set_condition(conds, "Failed", "True", reason, message);
    }
    let mut done = finished;
    if !finished && suspended {
        out.terminate = names(&active);
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
    } else if !finished {
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
            status["startTime"] = json!(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        let deadline_hit = spec["activeDeadlineSeconds"]
            .as_i64()
            .zip(parse_ts(&status["startTime"]))
            .is_some_and(|(ads, s)| (now - s).num_seconds() >= ads);
        let fail_job = failed.iter().find(|f| f.1 == Action::FailJob);
        let all_indexes_done =
            indexed && (completed.len() + failed_indexes.len()) as i64 >= completions;
        if let Some((_, _, msg)) = fail_job {
            fail(&mut conds, "PodFailurePolicy", msg);
            done = true;
        } else if per_index.is_none() && counted.len() as i64 > backoff_limit {
            fail(
                &mut conds,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            );
            done = true;
        } else if spec["maxFailedIndexes"]
            .as_i64()
            .is_some_and(|m| failed_indexes.len() as i64 > m)
        {
            fail(
                &mut conds,
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            );
            done = true;
        } else if deadline_hit {
            fail(
                &mut conds,
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            );
            done = true;
        } else if all_indexes_done && !failed_indexes.is_empty() {
            fail(&mut conds, "FailedIndexes", "Job has failed indexes");
            done = true;
        } else if (indexed && completed.len() as i64 >= completions)
            || (!indexed && succeeded.len() as i64 >= completions)
        {
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
            status["completionTime"] =
                json!(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            done = true;
        } else {
            // Exponential back-off after failures (1s, 2s, 4s ... capped at 10s; the real
            // controller starts at 10s, shortened so tests stay quick).
            let last_fail = counted
                .iter()
                .filter_map(|(p, _, _)| {
                    p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                })
                .max();
            let delay = if counted.is_empty() {
                0
            } else {
                (1i64 << (counted.len() as i64 - 1).min(4)).min(10)
            };
            let backing_off =
                last_fail.is_some_and(|t| (now - t.with_timezone(&Utc)).num_seconds() < delay);
            if !backing_off && terminating == 0 {
                if indexed {
                    let running: BTreeSet<i64> =
                        active.iter().filter_map(|p| pod_index(p)).collect();
                    let room = (parallelism - active.len() as i64).max(0) as usize;
                    out.create = (0..completions)
                        .filter(|i| {
                            !completed.contains(i)
                                && !failed_indexes.contains(i)
                                && !running.contains(i)
                        })
                        .take(room)
                        .map(Some)
                        .collect();
                } else {
                    let want =
                        parallelism.min(completions - succeeded.len() as i64) - active.len() as i64;
                    out.create = (0..want.max(0)).map(|_| None).collect();
                }
            }
        }
        if done {
            out.terminate = names(&active);
        }
    }
    let n_active = if done || suspended { 0 } else { active.len() };
    status["active"] = json!(n_active);
    status["succeeded"] = json!(if indexed {
        completed.len()
    } else {
        succeeded.len()
    });
    status["failed"] = json!(counted.len());
    status["ready"] = json!(active.iter().filter(|p| is_ready(p)).count());
    status["terminating"] = json!(terminating);
    status["uncountedTerminatedPods"] = json!({});
    if indexed {
        status["completedIndexes"] = json!(compress(&completed));
        if per_index.is_some() {
            status["failedIndexes"] = json!(compress(&failed_indexes));
        }
    }
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
    out.status = status;
    out
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
    let now = Utc::now();
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
        let mine: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["namespace"] == json!(ns) && is_controlled_by(p, &uid))
            .map(|p| &**p)
            .collect();
        let plan = plan(&job, &mine, now);
        for pod in &plan.terminate {
            tracing::info!(job = %name, %pod, "terminating job pod");
            let _ = cluster.delete(&pod_rt, &ns, pod, &DeleteOpts::default());
        }
        if !plan.create.is_empty() {
            let pods = plan.create.iter().map(|i| job_pod(&job, *i));
            create_pods(cluster, &job, pods, "job-controller");
        }
        if plan.status != job["status"] {
            let mut n = (*job).clone();
            n["status"] = plan.status;
            let _ = cluster.update(&job_rt, &ns, &name, n, &WriteOpts::status("job-controller"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        json!({"metadata": {"name": "train", "namespace": "ml", "uid": "u1"}, "spec": spec, "status": {}})
    }

    fn pod(name: &str, index: Option<i64>, phase: &str, exit: Option<i64>) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "ml", "annotations": {}}, "status": {"phase": phase}});
        if let Some(i) = index {
            p["metadata"]["annotations"][INDEX_KEY] = json!(i.to_string());
        }
        if let Some(code) = exit {
            p["status"]["containerStatuses"] = json!([{"name": "main", "state": {"terminated": {"exitCode": code, "finishedAt": "2020-01-01T00:00:00Z"}}}]);
        }
        p
    }

    fn cond<'a>(s: &'a Value, t: &str) -> Option<&'a Value> {
        s["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == t && c["status"] == "True")
    }

    #[test]
    fn an_indexed_job_creates_missing_indexes_up_to_parallelism_and_completes_on_all() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2, "backoffLimit": 6}),
        );
        let done0 = pod("train-0-a", Some(0), "Succeeded", Some(0));
        let running2 = pod("train-2-a", Some(2), "Running", None);
        let p = plan(&j, &[&done0, &running2], Utc::now());
        assert_eq!(p.create, vec![Some(1)], "one slot left, lowest index first");
        assert_eq!(p.status["completedIndexes"], "0");
        let all: Vec<Value> = (0..4)
            .map(|i| pod(&format!("train-{i}-a"), Some(i), "Succeeded", Some(0)))
            .collect();
        let refs: Vec<&Value> = all.iter().collect();
        let p = plan(&j, &refs, Utc::now());
        assert!(cond(&p.status, "Complete").is_some(), "{}", p.status);
        assert_eq!(p.status["completedIndexes"], "0-3");
        assert_eq!(p.status["succeeded"], 4);
    }

    #[test]
    fn an_indexed_pod_names_its_index_everywhere_kubernetes_does() {
        let j = job(json!({"completionMode": "Indexed", "completions": 2,
            "template": {"spec": {"containers": [{"name": "main"}]}}}));
        let p = job_pod(&j, Some(1));
        assert_eq!(p["metadata"]["generateName"], "train-1-");
        assert_eq!(p["metadata"]["annotations"][INDEX_KEY], "1");
        assert_eq!(p["metadata"]["labels"][INDEX_KEY], "1");
        assert_eq!(p["spec"]["hostname"], "train-1");
        assert_eq!(
            p["spec"]["containers"][0]["env"][0]["name"],
            "JOB_COMPLETION_INDEX"
        );
    }

    #[test]
    fn a_failed_index_is_retried_within_backoff_limit_then_the_job_fails() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 1}),
        );
        let ok = pod("train-0-a", Some(0), "Succeeded", Some(0));
        let f1 = pod("train-1-a", Some(1), "Failed", Some(1));
        let p = plan(&j, &[&ok, &f1], Utc::now());
        assert!(cond(&p.status, "Failed").is_none());
        assert_eq!(p.status["failed"], 1);
        let f2 = pod("train-1-b", Some(1), "Failed", Some(1));
        let p = plan(&j, &[&ok, &f1, &f2], Utc::now());
        let failed = cond(&p.status, "Failed").expect("Failed");
        assert_eq!(failed["reason"], "BackoffLimitExceeded");
        assert!(cond(&p.status, "FailureTarget").is_some());
    }

    #[test]
    fn backoff_limit_per_index_fails_only_that_index_and_the_job_at_the_end() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3, "backoffLimitPerIndex": 0}),
        );
        let f = pod("train-1-a", Some(1), "Failed", Some(3));
        let ok0 = pod("train-0-a", Some(0), "Succeeded", Some(0));
        let run2 = pod("train-2-a", Some(2), "Running", None);
        let p = plan(&j, &[&ok0, &f, &run2], Utc::now());
        assert_eq!(p.status["failedIndexes"], "1");
        assert!(
            p.create.is_empty(),
            "index 1 is not retried: {:?}",
            p.create
        );
        assert!(cond(&p.status, "Failed").is_none());
        let ok2 = pod("train-2-a", Some(2), "Succeeded", Some(0));
        let p = plan(&j, &[&ok0, &f, &ok2], Utc::now());
        assert_eq!(
            cond(&p.status, "Failed").expect("Failed")["reason"],
            "FailedIndexes"
        );
        let j = job(
            json!({"completionMode": "Indexed", "completions": 3, "backoffLimitPerIndex": 0, "maxFailedIndexes": 0}),
        );
        let p = plan(&j, &[&f], Utc::now());
        assert_eq!(
            cond(&p.status, "Failed").expect("Failed")["reason"],
            "MaxFailedIndexesExceeded"
        );
    }

    #[test]
    fn pod_failure_policy_rules_fail_the_job_ignore_or_count() {
        let policy = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]});
        let j = job(json!({"completions": 1, "backoffLimit": 0, "podFailurePolicy": policy}));
        let fatal = pod("train-x", None, "Failed", Some(42));
        let p = plan(&j, &[&fatal], Utc::now());
        let failed = cond(&p.status, "Failed").expect("Failed");
        assert_eq!(failed["reason"], "PodFailurePolicy");
        assert_eq!(
            failed["message"],
            "Container main for pod ml/train-x failed with exit code 42 matching FailJob rule at index 0"
        );
        let mut evicted = pod("train-y", None, "Failed", Some(137));
        evicted["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True"}]);
        let p = plan(&j, &[&evicted], Utc::now());
        assert!(cond(&p.status, "Failed").is_none(), "ignored: {}", p.status);
        assert!(p.status["failed"].is_null(), "not counted: {}", p.status);
        assert_eq!(p.create, vec![None], "replaced");
        let other = pod("train-z", None, "Failed", Some(1));
        let p = plan(&j, &[&other], Utc::now());
        assert_eq!(
            cond(&p.status, "Failed").expect("Failed")["reason"],
            "BackoffLimitExceeded"
        );
    }

    #[test]
    fn a_deleted_pod_counts_as_failed_at_once_so_backoff_limit_zero_fails_the_group() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0}),
        );
        let rank0 = pod("train-0-a", Some(0), "Running", None);
        let mut rank1 = pod("train-1-a", Some(1), "Running", None);
        rank1["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        let p = plan(&j, &[&rank0, &rank1], Utc::now());
        let failed = cond(&p.status, "Failed").expect("Failed");
        assert_eq!(failed["reason"], "BackoffLimitExceeded");
        assert_eq!(p.status["failed"], 1);
        assert!(p.create.is_empty(), "no replacement joins the survivor");
        assert_eq!(
            p.terminate,
            vec!["train-0-a".to_string()],
            "the survivor is stopped"
        );
        // Not with a podFailurePolicy (it waits for the terminal phase), nor while suspended.
        let j = job(
            json!({"completionMode": "Indexed", "completions": 2, "backoffLimit": 0, "podFailurePolicy": {"rules": []}}),
        );
        assert!(cond(&plan(&j, &[&rank0, &rank1], Utc::now()).status, "Failed").is_none());
        let j = job(
            json!({"completionMode": "Indexed", "completions": 2, "backoffLimit": 0, "suspend": true}),
        );
        assert!(cond(&plan(&j, &[&rank0, &rank1], Utc::now()).status, "Failed").is_none());
        // A deleted pod that had succeeded is a success.
        let mut done = pod("train-1-a", Some(1), "Succeeded", Some(0));
        done["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        let j = job(json!({"completionMode": "Indexed", "completions": 2, "backoffLimit": 0}));
        assert!(cond(&plan(&j, &[&rank0, &done], Utc::now()).status, "Failed").is_none());
    }

    #[test]
    fn indexes_compress_to_ranges() {
        assert_eq!(
            compress(&[0, 1, 2, 5, 7, 8].into_iter().collect()),
            "0-2,5,7-8"
        );
        assert_eq!(compress(&BTreeSet::new()), "");
    }
}
