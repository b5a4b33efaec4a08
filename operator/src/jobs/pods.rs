//! What a Job's pods say: the newest pod's phase, scheduling and termination message, and why
//! a fetch init container failed (the fetcher's own error line before a pod stopped from
//! outside).

use k8s_openapi::api::core::v1::Pod;

/// What the newest pod of a Job says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodState {
    pub name: String,
    pub phase: String,
    /// `Some((scheduled, reason, message))` from the PodScheduled condition.
    pub scheduled: Option<(bool, String, String)>,
    pub ip: Option<String>,
    pub termination_message: Option<String>,
    /// Why an init container that fetches an input failed: `<uri>: <Kind>: <cause>`.
    pub fetch_failure: Option<String>,
}

pub fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.clone().unwrap_or_default();
    let scheduled = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| {
            (
                c.status == "True",
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            )
        });
    let termination_message = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find_map(|cs| {
            let t = cs
                .state
                .and_then(|s| s.terminated)
                .or_else(|| cs.last_state.and_then(|s| s.terminated))?;
            t.message
                .filter(|m| !m.trim().is_empty())
                .map(|m| cut(m, TERMINATION_MESSAGE_MAX))
        });
    let fetch_failure = fetch_failure_of(pod).map(|(_, m)| m);
    PodState {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase: status.phase.unwrap_or_else(|| "Pending".into()),
        scheduled,
        ip: status.pod_ip.filter(|ip| !ip.is_empty()),
        termination_message,
        fetch_failure,
    }
}

/// Why a fetch init container of `pod` failed, and whether the fetcher said so itself (an
/// `error: ` line) rather than being stopped from outside (a signal, no word of its own).
fn fetch_failure_of(pod: &Pod) -> Option<(bool, String)> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|cs| cs.name.starts_with("fetch-"))
        .find_map(|cs| {
            let t = cs
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
                .filter(|t| t.exit_code != 0)?;
            let tail = t.message.as_deref().unwrap_or("");
            let said = tail.lines().any(|l| l.trim().starts_with("error: "));
            Some((said, fetch_error(tail, t.exit_code)))
        })
}

/// The fetch failure that best explains a Job's failure, over all its pods: one the fetcher
/// reported itself before any of a pod stopped from outside (when a Job fails, its other pods
/// are killed, and "exited with code 137" would hide the cause).
pub fn fetch_failure(pods: &[Pod]) -> Option<String> {
    let failures: Vec<(bool, String)> = pods.iter().filter_map(fetch_failure_of).collect();
    failures
        .iter()
        .find(|(said, _)| *said)
        .or_else(|| failures.first())
        .map(|(_, m)| m.clone())
}

/// What a failed `tailor-fetch` said: its last `error: ` line (the log tail is its termination
/// message), or its exit code's meaning.
pub fn fetch_error(log_tail: &str, exit_code: i32) -> String {
    let said = log_tail
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(|l| cut(l.to_string(), TERMINATION_MESSAGE_MAX));
    said.unwrap_or_else(|| {
        let kind = match exit_code {
            2 => "bad command line",
            3 => "Invalid",
            4 => "NotFound",
            5 => "PermissionDenied",
            6 => "Unreachable",
            7 => "ChecksumMismatch",
            8 => "SourceChanged",
            9 => "LocalIO",
            _ => "failed",
        };
        format!("tailor-fetch exited with code {exit_code} ({kind})")
    })
}

/// The most recently created pod.
pub fn newest(pods: &[Pod]) -> Option<&Pod> {
    pods.iter().max_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    })
}

/// Whether `pod` is controlled by the object with `uid` (its Job or ReplicaSet): what the
/// operator reads from a pod (termination message, `/progress`) comes only from pods its own
/// children made, never from any pod that merely carries the right labels.
pub fn controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// A termination message as the operator keeps it: the kubelet caps them at 4096 bytes, and a
/// message from elsewhere is cut there too.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fetch_says_its_last_error_line_or_its_exit_code() {
        let tail = "{\"level\":\"INFO\",\"message\":\"progress\"}\nerror: s3://b/k: PermissionDenied: 403 SignatureDoesNotMatch\n";
        assert_eq!(
            fetch_error(tail, 5),
            "s3://b/k: PermissionDenied: 403 SignatureDoesNotMatch"
        );
        assert_eq!(
            fetch_error("", 6),
            "tailor-fetch exited with code 6 (Unreachable)"
        );
    }

    #[test]
    fn the_fetchers_own_error_explains_a_job_better_than_a_killed_pod() {
        let pod = |exit: i32, message: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("p{exit}")},
                "status": {"initContainerStatuses": [{
                    "name": "fetch-0", "image": "f", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": exit, "message": message}}
                }]}
            }))
            .expect("pod")
        };
        let said = pod(5, "error: s3://b/k: PermissionDenied: 403\n");
        let killed = pod(137, "");
        for pods in [
            vec![killed.clone(), said.clone()],
            vec![said.clone(), killed.clone()],
        ] {
            assert_eq!(
                fetch_failure(&pods).as_deref(),
                Some("s3://b/k: PermissionDenied: 403")
            );
        }
        assert_eq!(
            fetch_failure(&[killed]).as_deref(),
            Some("tailor-fetch exited with code 137 (failed)")
        );
        assert_eq!(fetch_failure(&[]), None);
    }
}
