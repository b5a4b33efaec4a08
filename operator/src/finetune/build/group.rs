//! Training across GPUs and nodes: the ranks of a run (one per GPU of each trainer pod), the
//! Indexed Job of a multi-node group, the headless Service its pods meet over, the
//! NetworkPolicy that lets only the group's own pods (and the operator) reach them, and what a
//! failed group does.
//!
//! The trainer is distributed by its environment, as torchrun's workers are (`TAILOR_NNODES`,
//! `TAILOR_NPROC_PER_NODE`, `MASTER_ADDR`, `MASTER_PORT`; the node rank is the pod's
//! `JOB_COMPLETION_INDEX`); rank 0 hosts the rendezvous store on `MASTER_PORT`.
//!
//! A multi-node group restarts whole, by the operator, as JobSet restarts its Jobs: the
//! rendezvous is not generation-safe, so a replacement pod must not join the survivors of a
//! failed attempt. The group's Job has `backoffLimit: 0` (a failed or deleted pod fails it, and
//! the Job controller stops the others); the operator deletes it in the foreground (its pods go
//! first, so no old rank still answers to a rank's hostname) and creates it again as the next
//! attempt, whose ranks resume from the last checkpoint, until `backoffLimit` restarts are
//! spent. One pod of several GPUs is one process group in one container: the Job's own retries
//! already start it afresh.

use k8s_openapi::api::core::v1::{EnvVar, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

/// Where rank 0 serves the rendezvous (torchrun's default `MASTER_PORT`).
pub const RENDEZVOUS_PORT: u16 = 29500;
/// Annotation on a multi-node train Job: which attempt of its run's group it is (1, 2, ...).
pub const ATTEMPT: &str = "tailor.dev/attempt";
/// The completion index of an Indexed Job's pod (annotation and label, set by the Job
/// controller): its node rank.
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// A multi-node Job's name leaves room for `-<index>`: the pod's hostname is a DNS label.
const MAX_GROUP_JOB_NAME: usize = 60;

/// How a run's ranks are laid out: `nodes` pods of `per_node` ranks each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranks {
    pub nodes: u32,
    pub per_node: u32,
}

impl Ranks {
    pub fn world(&self) -> u32 {
        self.nodes * self.per_node
    }

    /// Several pods: an Indexed Job behind a headless Service, restarted whole.
    pub fn multi_node(&self) -> bool {
        self.nodes > 1
    }
}

/// The ranks of `ftj`: one per GPU of each pod (one on CPU), in `resources.nodes` pods.
pub fn ranks(ftj: &FineTuneJob) -> Ranks {
    let r = &ftj.spec.resources;
    Ranks {
        nodes: r.nodes.max(1),
        per_node: r.gpus.max(1),
    }
}

/// The train Job's name for a run of `ftj` (`<name>-<suffix>`). A multi-node Job's is at most 60
/// characters and has no dots, so that `<job>-<index>`, its pods' hostnames, are DNS labels.
pub fn job_name(ftj: &FineTuneJob, suffix: &str) -> String {
    let name = ftj.name_any();
    if !ranks(ftj).multi_node() {
        return jobs::child_name(&name, suffix);
    }
    let room = MAX_GROUP_JOB_NAME.saturating_sub(suffix.len() + 1);
    let mut base: String = name.replace('.', "-").chars().take(room).collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}-{suffix}")
}

/// The headless Service of a group's Job: the Job's name (a Service's must start with a letter).
pub fn service_name(job: &str) -> String {
    if job.starts_with(|c: char| c.is_ascii_lowercase()) {
        job.to_string()
    } else {
        format!("r{job}")
    }
}

/// Which attempt a train Job runs, and the seconds left of the run's `activeDeadlineSeconds`
/// (`None`: all of it, or none set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub number: u32,
    pub deadline_left: Option<i64>,
}

impl Attempt {
    pub fn first() -> Self {
        Self {
            number: 1,
            deadline_left: None,
        }
    }
}

/// The attempt the next train Job of `ftj`'s run is: the one after those its status counts. A
/// restarted group gets what is left of the deadline, which is the whole run's.
pub fn next_attempt(ftj: &FineTuneJob, now: Timestamp) -> Attempt {
    let st = ftj.status.clone().unwrap_or_default();
    let number = st.attempts + 1;
    let deadline_left = match (ftj.spec.active_deadline_seconds, &st.start_time) {
        (Some(limit), Some(start)) if number > 1 => {
            let spent = now.as_second() - start.0.as_second();
            Some((limit - spent.max(0)).max(1))
        }
        _ => None,
    };
    Attempt {
        number,
        deadline_left,
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The trainer's distributed environment (torchrun's contract) for a Job named `job`: none for
/// one rank; `127.0.0.1` as the rendezvous of one pod; the pod of index 0, by its hostname under
/// the group's headless Service, for several.
pub fn rank_env(ranks: Ranks, job: &str) -> Vec<EnvVar> {
    if ranks.world() <= 1 {
        return vec![];
    }
    let master = if ranks.multi_node() {
        format!("{job}-0.{}", service_name(job))
    } else {
        "127.0.0.1".to_string()
    };
    vec![
        env("TAILOR_NNODES", ranks.nodes.to_string()),
        env("TAILOR_NPROC_PER_NODE", ranks.per_node.to_string()),
        env("MASTER_ADDR", master),
        env("MASTER_PORT", RENDEZVOUS_PORT.to_string()),
    ]
}

/// Makes the train Job of a multi-node run an Indexed Job of `nodes` pods that all run at once,
/// fail as one (`backoffLimit: 0`: the operator restarts the group, see the module doc), and
/// live under the group's headless Service; it records its attempt.
pub(super) fn shape_group(job: &mut Job, ranks: Ranks, attempt: Attempt) {
    if !ranks.multi_node() {
        return;
    }
    let name = job.name_any();
    job.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ATTEMPT.into(), attempt.number.to_string());
    let Some(spec) = job.spec.as_mut() else {
        return;
    };
    let n = ranks.nodes as i32;
    spec.completion_mode = Some("Indexed".into());
    spec.completions = Some(n);
    spec.parallelism = Some(n);
    spec.backoff_limit = Some(0);
    if attempt.deadline_left.is_some() {
        spec.active_deadline_seconds = attempt.deadline_left;
    }
    if let Some(pod) = spec.template.spec.as_mut() {
        pod.subdomain = Some(service_name(&name));
    }
}

/// The headless Service a multi-node group's pods meet over (`None` for one pod): each pod is
/// `<job>-<index>.<service>`, published before it is ready (a trainer has no readiness probe to
/// pass before rank 0 must be found). Owned by the FineTuneJob.
pub fn rendezvous_service(ftj: &FineTuneJob, v: &Validated) -> Option<Service> {
    if !ranks(ftj).multi_node() {
        return None;
    }
    Some(Service {
        metadata: meta(ftj, &service_name(&v.job_name), &v.hash),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(JOB_LABEL.into(), v.job_name.clone())])),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: i32::from(RENDEZVOUS_PORT),
                target_port: Some(IntOrString::Int(i32::from(RENDEZVOUS_PORT))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The NetworkPolicy of a multi-node group (`None` for one pod): its pods accept any traffic of
/// the same Job's pods (the rendezvous store and the collectives' own connections, on ports
/// they pick) and the operator on the progress port, and nothing else. The rendezvous store
/// and the collectives are unauthenticated: no other pod, of this tenant or another, may reach
/// them. Named and owned like the Job.
pub fn network_policy(
    ftj: &FineTuneJob,
    v: &Validated,
    cfg: &OperatorConfig,
) -> Option<NetworkPolicy> {
    if !ranks(ftj).multi_node() {
        return None;
    }
    let selector = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    };
    let group = BTreeMap::from([(JOB_LABEL.to_string(), v.job_name.clone())]);
    let operator = NetworkPolicyPeer {
        pod_selector: Some(selector(BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            "tailor-operator".to_string(),
        )]))),
        namespace_selector: Some(selector(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            cfg.operator_namespace.clone(),
        )]))),
        ..Default::default()
    };
    Some(NetworkPolicy {
        metadata: meta(ftj, &v.job_name, &v.hash),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(group.clone())),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(selector(group)),
                        ..Default::default()
                    }]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(i32::from(cfg.progress_port))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                },
            ]),
            ..Default::default()
        }),
    })
}

/// The attempt a multi-node train Job runs (`None` for a Job of one pod).
pub fn attempt_of(job: &Job) -> Option<u32> {
    job.annotations().get(ATTEMPT)?.parse().ok()
}

/// Whether a multi-node group's failed Job restarts, and why (the Event and status message):
/// not after the run's deadline, nor once `backoffLimit` restarts are spent. `failure` is what
/// the failed rank said.
pub fn restart(
    ftj: &FineTuneJob,
    job: &Job,
    state: &JobState,
    failure: Option<&str>,
) -> Option<String> {
    let attempt = attempt_of(job)?;
    let (reason, message) = state.failed.as_ref()?;
    if reason == "DeadlineExceeded" || attempt > ftj.spec.backoff_limit.max(0) as u32 {
        return None;
    }
    let n = ranks(ftj).nodes;
    Some(format!(
        "attempt {attempt} of the group of {n} trainer pods failed ({reason}: {}); the group restarts as {n} new pods from the last checkpoint (attempt {} of at most {})",
        failure.unwrap_or(message),
        attempt + 1,
        ftj.spec.backoff_limit.max(0) + 1
    ))
}

/// Why a multi-node group's Job that is being deleted holds the run: its pods must be gone before
/// the next attempt's take their hostnames.
pub fn waiting_for_group(job: &Job) -> String {
    format!(
        "restarting the group: waiting for the pods of attempt {} (Job {}) to terminate; the next attempt resumes from the last checkpoint",
        attempt_of(job).unwrap_or_default(),
        job.name_any()
    )
}

fn index_of(pod: &Pod) -> Option<u32> {
    pod.annotations()
        .get(INDEX)
        .or_else(|| pod.labels().get(INDEX))?
        .parse()
        .ok()
}

/// Whether `pod` reports for the run: its final summary, `/progress`. Rank 0 does; a pod of a
/// one-pod Job is rank 0.
pub fn reports(pod: &Pod) -> bool {
    index_of(pod).is_none_or(|i| i == 0)
}

/// The pod whose state the job's status shows: the newest, for a one-pod Job; for a group, a pod
/// still waiting to be scheduled (the group trains only once all are), else rank 0.
pub fn shown_pod(pods: &[Pod]) -> Option<PodState> {
    if !pods.iter().any(|p| index_of(p).is_some()) {
        return jobs::newest(pods).map(jobs::pod_state);
    }
    let states: Vec<(Option<u32>, PodState)> = pods
        .iter()
        .map(|p| (index_of(p), jobs::pod_state(p)))
        .collect();
    let waiting = states.iter().find(|(_, s)| {
        !matches!(s.phase.as_str(), "Succeeded" | "Failed")
            && !matches!(s.scheduled, Some((true, ..)))
    });
    if let Some((_, s)) = waiting {
        return Some(s.clone());
    }
    let rank0: Vec<Pod> = pods.iter().filter(|p| reports(p)).cloned().collect();
    jobs::newest(&rank0)
        .or_else(|| jobs::newest(pods))
        .map(jobs::pod_state)
}
