//! The batch Jobs the operator runs (prepare, train): what their status and pods say, and the
//! volumes their pods mount. Pure functions over the API types.
//!
//! Here: the names, labels and annotations every Job shares. What a Job's status says, with
//! its Kueue queue and `spec.suspend`, is in `status`; what its pods say (the newest one, why a
//! fetch failed) in `pods`; the volumes, mounts and fetch init containers of a pod the operator
//! builds in `volumes`. Everything is re-exported here.

mod pods;
mod status;
mod volumes;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use pods::{
    PodState, TERMINATION_MESSAGE_MAX, controlled_by, fetch_error, fetch_failure, newest, pod_state,
};
pub use status::{
    JobState, KUEUE_QUEUE, fetched, job_state, kueue_queue, queue_for_kueue, suspend_patch,
};
pub use volumes::{FETCH_CACHE_DIR, PodVolumes};

/// Where each pod finds its mounted JSON config.
pub const CONFIG_DIR: &str = "/etc/tailor";
/// The container's termination message (the trainer's final JSON summary).
pub const TERMINATION_PATH: &str = "/dev/termination-log";
/// Label on every pod of a Job the operator runs, naming the Job.
pub const JOB_LABEL: &str = "tailor.dev/job";
/// Annotation with the hash of what a Job was built from.
pub const SPEC_HASH: &str = "tailor.dev/spec-hash";

pub fn managed_labels(kind_label: &str, owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "tailor-operator".to_string(),
        ),
        (kind_label.to_string(), owner.to_string()),
    ])
}

/// Hex SHA-256 of a JSON value (keys in insertion order, which our builders fix).
pub fn hash_json(v: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// `<base>-<suffix>`, with `base` cut so the whole stays a valid 63-character name.
pub fn child_name(base: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len() + 1);
    let mut b: String = base.chars().take(room).collect();
    while b.ends_with('-') {
        b.pop();
    }
    format!("{b}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_stay_valid() {
        assert_eq!(child_name("ds", "prepare-abc"), "ds-prepare-abc");
        let long = "a".repeat(80);
        let n = child_name(&long, "train-12345678");
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("-train-12345678"));
        assert_eq!(
            child_name(&format!("{}-b", "x".repeat(47)), "0123456789abcde"),
            format!("{}-0123456789abcde", "x".repeat(47))
        );
    }
}
