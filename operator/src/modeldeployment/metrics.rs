//! Canary metrics, registered into the operator's registry (prefix `tailor_operator`):
//!
//! - `tailor_operator_canary_rollbacks_total{namespace,modeldeployment,kind}`: canaries rolled
//!   back (the `TailorCanaryRolledBack` alert in manifests/monitoring).
//! - `tailor_operator_canary_promotions_total{namespace,modeldeployment,kind}`.
//! - `tailor_operator_canary_weight{namespace,modeldeployment}`: percent of users on the canary.
//!
//! `namespace` is the ModelDeployment's; the ServiceMonitor keeps it (`honorLabels`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailor_api::RolloutKind;

use super::rollout::Transition;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub namespace: String,
    pub modeldeployment: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub namespace: String,
    pub modeldeployment: String,
}

#[derive(Clone, Default)]
pub struct CanaryMetrics {
    rollbacks: Family<RolloutLabels, Counter>,
    promotions: Family<RolloutLabels, Counter>,
    weight: Family<DeploymentLabels, Gauge>,
}

impl CanaryMetrics {
    /// Registers the families in `registry` (whose prefix names them).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "canary_rollbacks",
            "Canaries rolled back",
            m.rollbacks.clone(),
        );
        registry.register(
            "canary_promotions",
            "Canaries promoted",
            m.promotions.clone(),
        );
        registry.register(
            "canary_weight",
            "Percent of users sent to the canary",
            m.weight.clone(),
        );
        m
    }

    pub fn observe(&self, namespace: &str, name: &str, weight: u32, t: Option<Transition>) {
        self.weight
            .get_or_create(&DeploymentLabels {
                namespace: namespace.into(),
                modeldeployment: name.into(),
            })
            .set(i64::from(weight));
        let labels = |kind: RolloutKind| RolloutLabels {
            namespace: namespace.into(),
            modeldeployment: name.into(),
            kind: match kind {
                RolloutKind::Adapter => "adapter".into(),
                RolloutKind::Pod => "pod".into(),
            },
        };
        match t {
            Some(Transition::RolledBack(k)) => {
                self.rollbacks.get_or_create(&labels(k)).inc();
            }
            Some(Transition::Promoted(k)) => {
                self.promotions.get_or_create(&labels(k)).inc();
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollbacks_render_under_the_alerts_name() {
        let mut registry = Registry::with_prefix("tailor_operator");
        let m = CanaryMetrics::register(&mut registry);
        m.observe("shop", "support", 10, None);
        m.observe(
            "shop",
            "support",
            0,
            Some(Transition::RolledBack(RolloutKind::Adapter)),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                "tailor_operator_canary_rollbacks_total{namespace=\"shop\",modeldeployment=\"support\",kind=\"adapter\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tailor_operator_canary_weight{namespace=\"shop\",modeldeployment=\"support\"} 0"
            ),
            "{text}"
        );
    }
}
