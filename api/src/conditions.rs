//! Standard status conditions (`Ready`, `Progressing`, `Degraded`, plus kind-specific types).
//!
//! `lastTransitionTime` moves only when a condition's status changes, so `kubectl wait` and
//! GitOps health checks see stable timestamps; `observedGeneration` always follows the writer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The object is doing what its spec asks (serving, prepared, trained, verified).
pub const READY: &str = "Ready";
/// The operator is working towards the spec (preparing, training, rolling out).
pub const PROGRESSING: &str = "Progressing";
/// Something is wrong that needs attention.
pub const DEGRADED: &str = "Degraded";
/// A FineTuneJob's dataset is Ready.
pub const DATASET_READY: &str = "DatasetReady";
/// A FineTuneJob's trainer pod is scheduled onto a node.
pub const SCHEDULED: &str = "Scheduled";
/// A FineTuneJob's adapter was evaluated against its base model (`spec.evaluation`).
pub const EVALUATED: &str = "Evaluated";
/// A ModelDeployment's last canary was rolled back.
pub const ROLLED_BACK: &str = "RolledBack";

/// `True`, `False` or `Unknown`, as Kubernetes spells them.
pub fn status_str(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
}

/// The longest condition message kept (Kubernetes allows 32 KiB; messages quote things users
/// and pods control, so status stays small whatever they write).
pub const MESSAGE_MAX: usize = 2048;

/// `message` cut to [`MESSAGE_MAX`] bytes at a character boundary, marked when cut.
fn bounded(message: String) -> String {
    if message.len() <= MESSAGE_MAX {
        return message;
    }
    let mut end = MESSAGE_MAX - " […]".len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} […]", &message[..end])
}

/// Builds a condition (its message bounded, see [`MESSAGE_MAX`]); `set` fills in the
/// transition time.
pub fn new(
    type_: &str,
    status: Option<bool>,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status_str(status).to_string(),
        reason: reason.to_string(),
        message: bounded(message.into()),
        observed_generation,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Sets `cond` in `conditions`, replacing one of the same type. The transition time is `now`
/// when the status changed (or the type is new) and is kept otherwise. Returns whether anything
/// a reader would see changed.
pub fn set(conditions: &mut Vec<Condition>, mut cond: Condition, now: Timestamp) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(existing) => {
            cond.last_transition_time = if existing.status == cond.status {
                existing.last_transition_time.clone()
            } else {
                Time(now)
            };
            let changed = *existing != cond;
            *existing = cond;
            changed
        }
        None => {
            cond.last_transition_time = Time(now);
            conditions.push(cond);
            true
        }
    }
}

/// The condition of the given type, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_with_a_marker() {
        let c = new("Ready", Some(false), "X", "é".repeat(5000), None);
        assert!(c.message.len() <= MESSAGE_MAX, "{}", c.message.len());
        assert!(c.message.ends_with(" […]"));
        assert_eq!(new("Ready", None, "X", "short", None).message, "short");
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn adding_a_new_type_stamps_now() {
        let mut conds = vec![];
        assert!(set(
            &mut conds,
            new(READY, Some(false), "Pending", "waiting", Some(1)),
            at(10)
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(at(10)));
        assert_eq!(conds[0].status, "False");
    }

    #[test]
    fn same_status_keeps_transition_time_but_updates_message_and_generation() {
        let mut conds = vec![];
        set(
            &mut conds,
            new(READY, Some(false), "Pending", "a", Some(1)),
            at(10),
        );
        let changed = set(
            &mut conds,
            new(READY, Some(false), "Pending", "b", Some(2)),
            at(20),
        );
        assert!(changed);
        assert_eq!(conds[0].last_transition_time, Time(at(10)));
        assert_eq!(conds[0].message, "b");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn status_change_moves_transition_time() {
        let mut conds = vec![];
        set(
            &mut conds,
            new(READY, Some(false), "Pending", "a", Some(1)),
            at(10),
        );
        set(
            &mut conds,
            new(READY, Some(true), "Ready", "done", Some(1)),
            at(30),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(at(30)));
        assert!(is_true(&conds, READY));
    }

    #[test]
    fn identical_condition_reports_no_change() {
        let mut conds = vec![];
        set(
            &mut conds,
            new(READY, Some(true), "Ready", "ok", Some(3)),
            at(10),
        );
        assert!(!set(
            &mut conds,
            new(READY, Some(true), "Ready", "ok", Some(3)),
            at(99)
        ));
        assert_eq!(conds[0].last_transition_time, Time(at(10)));
    }

    #[test]
    fn types_are_independent() {
        let mut conds = vec![];
        set(&mut conds, new(READY, Some(true), "Ready", "", None), at(1));
        set(
            &mut conds,
            new(DEGRADED, Some(false), "AsExpected", "", None),
            at(2),
        );
        set(
            &mut conds,
            new(READY, Some(false), "Failed", "x", None),
            at(3),
        );
        assert_eq!(conds.len(), 2);
        assert_eq!(
            get(&conds, DEGRADED).map(|c| &c.last_transition_time),
            Some(&Time(at(2)))
        );
        assert!(!is_true(&conds, READY));
        assert!(get(&conds, PROGRESSING).is_none());
    }

    #[test]
    fn unknown_status_is_spelled_unknown() {
        assert_eq!(status_str(None), "Unknown");
    }
}
