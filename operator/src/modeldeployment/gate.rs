//! The optional gate before a canary takes traffic (`rollout.requireBetterThanBase`): each
//! adapter the canary changes must have a validation loss below the base model's, as recorded
//! by its FineTuneJob in the LoraAdapter's lineage.

use super::revision::{RevisionSpec, changed_routes};
use super::rollout::Gate;

pub fn gate(required: bool, stable: &RevisionSpec, canary: &RevisionSpec) -> Gate {
    if !required {
        return Gate::NotRequired;
    }
    let mut checked = vec![];
    for route in changed_routes(stable, canary) {
        let Some(a) = canary.adapter_for(&route) else {
            continue; // removed from the canary: nothing to judge
        };
        match (a.validation_loss, a.base_validation_loss) {
            (Some(v), Some(b)) if v < b => {
                checked.push(format!(
                    "{}: validation loss {v:.4} < base {b:.4}",
                    a.adapter
                ));
            }
            (Some(v), Some(b)) => {
                return Gate::Fail(format!(
                    "{}: validation loss {v:.4} is not below the base model's {b:.4} (requireBetterThanBase)",
                    a.adapter
                ));
            }
            _ => {
                return Gate::Pending(format!(
                    "LoraAdapter {} has no recorded validation losses (requireBetterThanBase)",
                    a.adapter
                ));
            }
        }
    }
    if checked.is_empty() {
        Gate::NotRequired
    } else {
        Gate::Pass(checked.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modeldeployment::revision::{PodSpec, ResolvedAdapter};

    fn rev(adapter: &str, loss: Option<(f64, f64)>) -> RevisionSpec {
        RevisionSpec {
            pods: PodSpec {
                base_model_uri: "pvc://a/base".into(),
                base_model_credentials: None,
                base_model_revision: None,
                served_name: "base".into(),
                max_batch_size: 16,
                max_seq_length: 2048,
                max_loaded_adapters: 8,
                dtype: "auto".into(),
                template: None,
            },
            adapters: vec![ResolvedAdapter {
                served_name: "support".into(),
                adapter: adapter.into(),
                uri: format!("pvc://a/{adapter}"),
                sha256: None,
                validation_loss: loss.map(|l| l.0),
                base_validation_loss: loss.map(|l| l.1),
            }],
        }
    }

    #[test]
    fn better_than_base_passes_worse_fails_unknown_waits() {
        let stable = rev("v1", Some((1.0, 2.0)));
        assert!(matches!(
            gate(true, &stable, &rev("v2", Some((0.9, 2.0)))),
            Gate::Pass(_)
        ));
        match gate(true, &stable, &rev("v2", Some((2.3, 2.05)))) {
            Gate::Fail(m) => assert!(
                m.contains("v2: validation loss 2.3000 is not below the base model's 2.0500"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            gate(true, &stable, &rev("v2", None)),
            Gate::Pending(_)
        ));
        assert_eq!(
            gate(false, &stable, &rev("v2", Some((3.0, 2.0)))),
            Gate::NotRequired
        );
        // Unchanged adapters are not judged again.
        assert_eq!(gate(true, &stable, &stable.clone()), Gate::NotRequired);
    }
}
