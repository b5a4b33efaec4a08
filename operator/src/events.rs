//! Events: one per condition transition (reason = the condition's reason) and one per error
//! (reason = its category). Published on change, not on every pass.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType};

use crate::context::Context;

use crate::error::{Category, Error, truncate};

/// Events being sent at once, at most.
pub const EVENTS_IN_FLIGHT: usize = 8;

/// Whether a condition reason names a problem (an error category or a failure).
pub fn is_warning(reason: &str) -> bool {
    Category::ALL.iter().any(|c| c.as_str() == reason)
        || matches!(
            reason,
            "Failed"
                | "Unschedulable"
                | "Cancelled"
                | "Restarting"
                | crate::finetune::build::SPEC_CHANGED
        )
}

/// The conditions of `types` whose status or reason differs between `before` and `after`.
pub fn transitions<'a>(
    before: &[Condition],
    after: &'a [Condition],
    types: &[&str],
) -> Vec<&'a Condition> {
    after
        .iter()
        .filter(|c| types.contains(&c.type_.as_str()))
        .filter(|c| {
            !before
                .iter()
                .any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason)
        })
        .collect()
}

/// Publishes in the background: Events are best effort and must not hold up a reconcile (a
/// first status can be several Events, each a round trip). At most [`EVENTS_IN_FLIGHT`] are
/// sent at once, so a burst of reconciles does not flood the API server with them.
pub fn publish(
    ctx: &Context,
    obj: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate(note, 1000)),
        action: action.to_string(),
        secondary: None,
    };
    let recorder = ctx.recorder.clone();
    let slots = ctx.event_slots.clone();
    let obj = obj.clone();
    tokio::spawn(async move {
        let Ok(_slot) = slots.acquire_owned().await else {
            return;
        };
        if let Err(e) = recorder.publish(&ev, &obj).await {
            tracing::warn!(error = %e, reason = %ev.reason, "publishing event");
        }
    });
}

/// Publishes the transitions of the given condition types (in the background).
pub fn publish_transitions(
    ctx: &Context,
    obj: &ObjectReference,
    before: &[Condition],
    after: &[Condition],
    types: &[&str],
) {
    for c in transitions(before, after, types) {
        let type_ = if is_warning(&c.reason) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = if c.message.is_empty() {
            format!("{} is {}", c.type_, c.status)
        } else {
            c.message.clone()
        };
        publish(ctx, obj, type_, &c.reason, &note, &c.type_);
    }
}

/// Publishes a reconcile error as a Warning whose reason is its category.
pub fn publish_error(ctx: &Context, obj: &ObjectReference, err: &Error) {
    publish(
        ctx,
        obj,
        EventType::Warning,
        err.category().as_str(),
        &err.chain(),
        "Reconcile",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailor_api::conditions;

    #[test]
    fn only_changed_conditions_are_transitions() {
        let before = vec![
            conditions::new("Ready", Some(false), "Preparing", "a", Some(1)),
            conditions::new("Progressing", Some(true), "Preparing", "", Some(1)),
        ];
        let after = vec![
            conditions::new("Ready", Some(true), "Prepared", "b", Some(1)),
            conditions::new(
                "Progressing",
                Some(true),
                "Preparing",
                "new message",
                Some(1),
            ),
        ];
        let t = transitions(&before, &after, &["Ready", "Progressing"]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].reason, "Prepared");
    }

    #[test]
    fn error_categories_are_warnings() {
        assert!(is_warning("DatasetNotFound"));
        assert!(is_warning("Unschedulable"));
        assert!(!is_warning("Prepared"));
    }
}
