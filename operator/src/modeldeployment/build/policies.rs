//! What protects a deployment's pods: its NetworkPolicies (servers reached only by its router
//! and the operator, the router's admin port only by the operator) and its disruption budgets.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use tailor_api::ModelDeployment;

use super::{ROUTER_ADMIN_PORT, ROUTER_PORT, SERVER_PORT, labels, meta, router_name, selector};
use crate::jobs;

fn peer(labels: BTreeMap<String, String>, namespace: Option<&str>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..Default::default()
        }),
        namespace_selector: namespace.map(|ns| LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                ns.to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(p: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Disruption budgets: a node drain takes at most one router pod and one serving pod of the
/// deployment at a time (its servers across revisions count together).
pub fn disruption_budgets(md: &ModelDeployment) -> Vec<PodDisruptionBudget> {
    let md_name = md.name_any();
    ["tailor-router", "tailor-server"]
        .into_iter()
        .map(|component| PodDisruptionBudget {
            metadata: meta(
                md,
                jobs::child_name(&md_name, component.trim_start_matches("tailor-")),
                labels(&md_name, "tailor-disruption"),
            ),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector(&labels(&md_name, component))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        })
        .collect()
}

/// The NetworkPolicies of a deployment: its servers accept only its router and the operator;
/// its router accepts clients on the API port and only the operator on the admin port (`/stats`).
pub fn network_policies(md: &ModelDeployment, operator_namespace: &str) -> Vec<NetworkPolicy> {
    let md_name = md.name_any();
    let operator = peer(
        BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            "tailor-operator".to_string(),
        )]),
        Some(operator_namespace),
    );
    let router_pods = selector(&labels(&md_name, "tailor-router"));
    let server_pods = selector(&labels(&md_name, "tailor-server"));
    let policy =
        |name: String, pods: BTreeMap<String, String>, ingress: Vec<NetworkPolicyIngressRule>| {
            NetworkPolicy {
                metadata: meta(md, name, labels(&md_name, "tailor-network")),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(pods),
                        ..Default::default()
                    }),
                    policy_types: Some(vec!["Ingress".into()]),
                    ingress: Some(ingress),
                    ..Default::default()
                }),
            }
        };
    vec![
        policy(
            jobs::child_name(&md_name, "servers"),
            server_pods,
            vec![NetworkPolicyIngressRule {
                from: Some(vec![peer(router_pods.clone(), None), operator.clone()]),
                ports: Some(vec![port(SERVER_PORT)]),
            }],
        ),
        policy(
            router_name(&md_name),
            router_pods,
            vec![
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(ROUTER_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(vec![port(ROUTER_ADMIN_PORT)]),
                },
            ],
        ),
    ]
}
