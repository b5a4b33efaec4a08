//! What a Job's status says ([`JobState`]), the Kueue queue it is submitted to and who owns its
//! `spec.suspend`, and the URIs its pods fetch.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Kueue's label naming the LocalQueue a workload is submitted to.
pub const KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";

/// The Kueue queue an object names (its `kueue.x-k8s.io/queue-name` label), if any.
pub fn kueue_queue(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()?
        .get(KUEUE_QUEUE)
        .map(String::as_str)
        .filter(|q| !q.is_empty())
}

/// Submits `job` to Kueue's `queue`: the label Kueue looks for, and created suspended, as Kueue
/// requires; Kueue unsuspends it when it admits the workload.
pub fn queue_for_kueue(job: &mut Job, queue: Option<&str>) {
    let Some(q) = queue else { return };
    job.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(KUEUE_QUEUE.into(), q.into());
    if let Some(spec) = job.spec.as_mut() {
        spec.suspend = Some(true);
    }
}

/// The `suspend` the operator sets on an existing Job, if any. Who owns the field:
///
/// | `spec.suspend` | queue label | Job suspended | operator sets                  |
/// |----------------|-------------|---------------|--------------------------------|
/// | true           | any         | false         | `true` (the user stops it)     |
/// | false          | none        | true          | `false` (the user resumes it)  |
/// | false          | set         | either        | nothing: Kueue admits/preempts |
/// | any            | any         | complete      | nothing                        |
pub fn suspend_patch(want_suspended: bool, queued: bool, job: &JobState) -> Option<bool> {
    if job.complete || job.suspended == want_suspended {
        return None;
    }
    match (want_suspended, queued) {
        (true, _) => Some(true),
        (false, false) => Some(false),
        (false, true) => None,
    }
}

/// What a Job's status says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobState {
    pub complete: bool,
    /// `Some((reason, message))` once the Job failed for good.
    pub failed: Option<(String, String)>,
    pub suspended: bool,
    /// The Kueue queue a suspended Job waits in for admission (it carries the queue label).
    pub awaiting_admission: Option<String>,
    pub active: i32,
    pub failed_pods: i32,
    pub succeeded_pods: i32,
}

pub fn job_state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let conds = status.conditions.unwrap_or_default();
    let is = |t: &str| conds.iter().find(|c| c.type_ == t && c.status == "True");
    JobState {
        complete: is("Complete").is_some(),
        failed: is("Failed").map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| "Failed".into()),
                c.message.clone().unwrap_or_default(),
            )
        }),
        suspended: job.spec.as_ref().and_then(|s| s.suspend) == Some(true),
        awaiting_admission: (job.spec.as_ref().and_then(|s| s.suspend) == Some(true))
            .then(|| kueue_queue(&job.metadata).map(String::from))
            .flatten(),
        active: status.active.unwrap_or(0),
        failed_pods: status.failed.unwrap_or(0),
        succeeded_pods: status.succeeded.unwrap_or(0),
    }
}

/// The URIs a Job's pods fetch, as its fetch init containers were given them.
pub fn fetched(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.init_containers.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name.starts_with("fetch-"))
        .filter_map(|c| c.args.as_ref()?.first().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kueue_owns_suspend_of_queued_jobs_and_the_user_owns_the_rest() {
        let running = JobState::default();
        let suspended = JobState {
            suspended: true,
            ..JobState::default()
        };
        let done = JobState {
            complete: true,
            ..JobState::default()
        };
        assert_eq!(suspend_patch(true, false, &running), Some(true));
        assert_eq!(suspend_patch(true, true, &running), Some(true));
        assert_eq!(suspend_patch(false, false, &suspended), Some(false));
        assert_eq!(suspend_patch(false, true, &suspended), None, "Kueue admits");
        assert_eq!(suspend_patch(false, true, &running), None);
        assert_eq!(suspend_patch(true, false, &done), None);

        let mut job = Job {
            spec: Some(Default::default()),
            ..Job::default()
        };
        queue_for_kueue(&mut job, None);
        assert_eq!(job_state(&job).awaiting_admission, None);
        queue_for_kueue(&mut job, Some("team-a"));
        assert_eq!(kueue_queue(&job.metadata), Some("team-a"));
        let st = job_state(&job);
        assert!(st.suspended);
        assert_eq!(st.awaiting_admission.as_deref(), Some("team-a"));
    }
}
