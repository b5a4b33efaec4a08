//! The ModelDeployment controller: the I/O around the pure pipeline (see the module header).
//!
//! Reconciles read Deployments, ReplicaSets, Services, ConfigMaps, pods and LoraAdapters from
//! caches the controller's own watches fill; the only reads from the API server are the two
//! Secrets a deployment uses (its users' API keys and the serving token), by name in its
//! namespace. HTTP calls to pods go through [`super::clients`], concurrently.
//!
//! Here: the reconcile pipeline itself and the status of a spec it cannot act on. The watches
//! and caches are set up in `watches`; the dereference step (the LoraAdapters the spec names, the
//! base model's Hub commit) is in `dereference`; what the pipeline reads and calls around it
//! (Secrets, serving pods, servers' and routers' HTTP APIs, pruning) in `observe`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tailor_api::{LoraAdapter, LoraAdapterPhase, MetricsSource, ModelDeployment, PodAdapters};

use super::build::{self, MDEP_LABEL, REVISION_LABEL, SNAPSHOT_LABEL, Side};
use super::clients::{self, Peer};
use super::revision::{self, ResolvedAdapter, RevisionSpec};
use super::rollout::{self, Readiness, Window};
use super::{NAME, autoscale, gate, pods, stats};
use crate::apply;
use crate::cache;
use crate::context::Context;
use crate::controller::{self, valid};
use crate::error::{Category, Error, is_not_found};
use crate::events;
use crate::inputs;
use crate::jobs;

mod dereference;
mod observe;
mod watches;
use dereference::{base_model_pin, resolve_adapters};
use observe::*;
pub use watches::run;

/// The ModelDeployment controller: the shared [`Context`] and the caches of everything its
/// reconciles read.
pub struct Ctx {
    pub base: Arc<Context>,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    services: Store<Service>,
    config_maps: Store<ConfigMap>,
    pods: Store<Pod>,
    adapters: Store<DeserializeGuard<LoraAdapter>>,
    /// Each serving pod's busy seconds at the autoscaler's last reading (`ns/md/pod` → (when,
    /// seconds)): their rate is the pod's mean load since then.
    busy: std::sync::Mutex<BTreeMap<String, (std::time::Instant, f64)>>,
}

impl controller::Reconciler for Ctx {
    type K = ModelDeployment;
    const NAME: &'static str = NAME;
    fn context(&self) -> &Context {
        &self.base
    }
    fn caches_ready(&self) -> bool {
        cache::is_ready(&self.deployments)
            && cache::is_ready(&self.replica_sets)
            && cache::is_ready(&self.services)
            && cache::is_ready(&self.config_maps)
            && cache::is_ready(&self.pods)
            && cache::is_ready(&self.adapters)
    }
    async fn reconcile(&self, md: &ModelDeployment) -> Result<Action, Error> {
        if md.meta().deletion_timestamp.is_some() {
            // Children are owned: garbage collection removes them.
            return Ok(Action::await_change());
        }
        match pipeline(md, self).await {
            Err(Error::InvalidSpec(message)) => {
                invalid(md, &self.base, Category::InvalidSpec, &message).await?;
                Ok(Action::await_change())
            }
            other => other,
        }
    }
}

/// Status for a spec the operator cannot act on: the condition says why; the children that
/// serve keep serving, untouched, until the spec changes.
async fn invalid(
    md: &ModelDeployment,
    ctx: &Context,
    category: Category,
    message: &str,
) -> Result<(), Error> {
    ctx.metrics.error(NAME, category);
    let st = rollout::invalid_status(md, category.as_str(), message, Timestamp::now());
    controller::write_status(ctx, md, &st).await?;
    Ok(())
}

async fn pipeline(md: &ModelDeployment, r: &Ctx) -> Result<Action, Error> {
    let ctx = &*r.base;
    let ns = md.namespace().unwrap_or_default();
    let name = md.name_any();
    let cfg = &ctx.config;

    // Validate what needs no lookup.
    if name.len() > 40 {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} is {} characters; ModelDeployment names may be at most 40 so that child names stay valid",
            name.len()
        )));
    }
    for (field, t) in [
        ("spec.server.podTemplate", &md.spec.server.pod_template),
        ("spec.router.podTemplate", &md.spec.router.pod_template),
    ] {
        crate::pods::check_template(field, t.as_ref()).map_err(Error::InvalidSpec)?;
    }
    let analysis = &md.spec.rollout.analysis;
    if analysis.metrics_source == MetricsSource::Prometheus {
        let address = analysis
            .prometheus
            .as_ref()
            .map(|p| p.address.as_str())
            .unwrap_or_default();
        if !clients::prometheus_allowed(&cfg.prometheus_allow_list, address) {
            return Err(Error::InvalidSpec(format!(
                "spec.rollout.analysis.prometheus.address {address:?} is not one the operator may query: the cluster admin lists the allowed Prometheus addresses in the operator config (prometheusAllowList: {:?})",
                cfg.prometheus_allow_list
            )));
        }
    }

    let client = ctx.client.clone();
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let deploys = Api::<Deployment>::namespaced(client.clone(), &ns);
    let svcs = Api::<Service>::namespaced(client.clone(), &ns);
    let prev = md.status.clone().unwrap_or_default();
    let now = Timestamp::now();

    // Observe and validate: what the desired revision serves.
    let mut desired = RevisionSpec::new(&md.spec, resolve_adapters(md, r, &ns)?);
    super::runtime::check(&desired).map_err(Error::InvalidSpec)?;
    let desired_rev = desired.revision();
    desired.pods.base_model_revision = base_model_pin(md, r, &ns, &desired_rev).await?;
    let keys = api_keys(md, ctx, &ns).await?;
    let token = serving_token(md, ctx, &ns).await?;
    let peer = Peer {
        http: &ctx.http,
        token: Some(&token),
    };
    apply::apply(&cms, &build::snapshot_config_map(md, &desired)).await?;

    // The stable revision's spec from its snapshot (the spec may have moved on).
    let mut previous = prev.clone();
    let mut stable_spec = None;
    if let Some(s) = &prev.stable_revision {
        if *s == desired_rev {
            stable_spec = Some(desired.clone());
        } else {
            stable_spec = r
                .config_map(&ns, &build::snapshot_name(&name, s))
                .as_deref()
                .and_then(build::read_snapshot);
            if stable_spec.is_none() {
                tracing::warn!(revision = %s, "stable revision snapshot missing: serving the desired revision outright");
                previous.stable_revision = None;
            }
        }
    }
    let plan = rollout::plan(&previous, &desired_rev);
    let stable_spec = if plan.stable == desired_rev {
        desired.clone()
    } else {
        stable_spec.unwrap_or_else(|| desired.clone())
    };
    let canary_spec = plan.canary.as_ref().map(|_| desired.clone());

    // Observe: serving pods and the adapters they hold, the router.
    let stable_pods = r
        .serving_pods(peer, &ns, &name, &stable_spec.pod_revision())
        .await;
    let canary_pods = match &canary_spec {
        Some(c) if c.pod_revision() != stable_spec.pod_revision() => {
            Some(r.serving_pods(peer, &ns, &name, &c.pod_revision()).await)
        }
        _ => None,
    };
    let router_ip = cache::get(&r.services, &ns, &build::endpoint_service_name(&name))
        .as_deref()
        .and_then(cluster_ip);
    let router_pods = r.router_pods(&ns, &name);
    let router_ready = !router_pods.is_empty();
    // Autoscaling: the servers' load, read every `interval`, decides the pods per revision.
    let scaling = match &md.spec.autoscaling {
        Some(a) if autoscale::due(a, prev.autoscaling.as_ref(), now) => {
            let pods_: Vec<&ServingPod> = stable_pods
                .iter()
                .chain(canary_pods.iter().flatten())
                .collect();
            let key = format!("{ns}/{name}/");
            let reading = read_load(peer, a, &pods_, &r.busy, &key).await;
            let current = autoscale::replicas(&md.spec, prev.autoscaling.as_ref());
            Some(autoscale::decide(
                a,
                prev.autoscaling.as_ref(),
                current,
                &reading,
                prev.canary_revision.is_some(),
                now,
            ))
        }
        Some(_) => prev.autoscaling.clone(),
        None => None,
    };
    let replicas = autoscale::replicas(&md.spec, scaling.as_ref());
    // Ready needs the pods asked for; with autoscaling, its minimum (pods it adds are capacity).
    let ready_needs = md
        .spec
        .autoscaling
        .as_ref()
        .map_or(replicas, |a| a.min_replicas.min(replicas));
    let mut stable_ready = readiness_of(&stable_pods, ready_needs, &stable_spec);
    if stable_ready.ready && !router_ready {
        stable_ready = Readiness::not_ready("router not ready");
    }
    let canary_ready = match &canary_spec {
        Some(c) => readiness_of(
            canary_pods.as_deref().unwrap_or(&stable_pods),
            ready_needs,
            c,
        ),
        None => Readiness::default(),
    };
    let gate = match &canary_spec {
        Some(c) => gate::gate(&md.spec.rollout, &stable_spec, c),
        None => rollout::Gate::NotRequired,
    };
    let window = match (
        rollout::analysis_window(&md.spec.rollout, &previous, &desired_rev, now),
        &plan.canary,
    ) {
        (Some(w), Some(c)) => {
            analysis_window(ctx, peer, md, &router_pods, &plan.stable, c, w).await
        }
        _ => None,
    };

    // Decide.
    let decision = rollout::decide(&rollout::Input {
        rollout: &md.spec.rollout,
        generation: md.metadata.generation,
        desired: &desired_rev,
        previous: &previous,
        now,
        stable: stable_ready,
        canary: canary_ready,
        gate,
        window,
    });
    let mut st = decision.status.clone();
    // An Event per change of the count (one reason per direction: a recorder folds repeats of
    // one reason into a series).
    let before = autoscale::replicas(&md.spec, prev.autoscaling.as_ref());
    let scaled_event = scaling
        .as_ref()
        .filter(|s| s.desired_replicas != before)
        .map(|s| {
            let reason = if s.desired_replicas > before {
                "ScaledUp"
            } else {
                "ScaledDown"
            };
            (reason, s.message.clone())
        });
    st.autoscaling = scaling;

    // Build and apply the children of what serves now.
    let stable_rev = st
        .stable_revision
        .clone()
        .unwrap_or_else(|| desired_rev.clone());
    let stable_spec = if stable_rev == desired_rev {
        desired.clone()
    } else {
        stable_spec
    };
    let canary = st.canary_revision.clone().map(|c| (c, desired.clone()));
    let mut by_pod: BTreeMap<String, (RevisionSpec, BTreeMap<String, String>)> = BTreeMap::new();
    for spec in std::iter::once(&stable_spec).chain(canary.as_ref().map(|(_, s)| s)) {
        let entry = by_pod
            .entry(spec.pod_revision())
            .or_insert_with(|| (spec.clone(), BTreeMap::new()));
        for a in &spec.adapters {
            entry.1.insert(a.adapter.clone(), a.uri.clone());
        }
    }
    let fault = build::fault_injection(md).filter(|_| cfg.allow_fault_injection);
    let mut backends = BTreeMap::new();
    let mut serving_vols = BTreeMap::new();
    for (pod_rev, (spec, uris)) in &by_pod {
        let cm_name = build::serving_name(&name, pod_rev);
        let vols = build::serving_volumes(cfg, &ns, &cm_name, &spec.pods, uris)
            .map_err(Error::InvalidSpec)?;
        let svc = apply::apply(&svcs, &build::server_service(md, pod_rev)).await?;
        let host = cluster_ip(&svc)
            .unwrap_or_else(|| format!("{}.{ns}.svc", build::serving_name(&name, pod_rev)));
        backends.insert(
            pod_rev.clone(),
            format!("http://{host}:{}", build::SERVER_PORT),
        );
        serving_vols.insert(pod_rev.clone(), vols);
    }
    let backend = |spec: &RevisionSpec| {
        backends
            .get(&spec.pod_revision())
            .cloned()
            .unwrap_or_default()
    };
    let stable_backend = backend(&stable_spec);
    let canary_backend = canary.as_ref().map(|(_, s)| backend(s));
    let routes = build::router_routes(
        Side {
            revision: &stable_rev,
            spec: &stable_spec,
            backend: &stable_backend,
        },
        canary
            .as_ref()
            .zip(canary_backend.as_deref())
            .map(|((rev, spec), b)| {
                (
                    Side {
                        revision: rev.as_str(),
                        spec,
                        backend: b,
                    },
                    st.canary_weight,
                )
            }),
    );
    let window_secs = std::time::Duration::from(md.spec.rollout.analysis.interval).as_secs();
    let router_config = build::router_config(routes, &keys, window_secs);
    let router_cm = build::router_config_map(md, &router_config);
    apply::apply(&cms, &router_cm).await?;
    if cfg.network_policies {
        let nps = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
        for np in build::network_policies(md, &cfg.operator_namespace) {
            apply::apply(&nps, &np).await?;
        }
    }
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns);
    for pdb in build::disruption_budgets(md) {
        apply::apply(&pdbs, &pdb).await?;
    }
    apply::apply(&deploys, &build::router_deployment(md, cfg, replicas)).await?;
    let router_svc = apply::apply(&svcs, &build::router_service(md)).await?;
    let router_ip = cluster_ip(&router_svc).or(router_ip);
    st.endpoint = router_ip
        .as_ref()
        .map(|ip| format!("http://{ip}:{}/v1", build::ROUTER_PORT));
    st.base_model_revision = desired.pods.base_model_revision.clone();
    // The scale subresource's view: the stable revision's ready serving pods.
    st.replicas = i32::try_from(stable_pods.len()).unwrap_or(i32::MAX);
    st.selector = Some(build::server_selector(&name, &stable_spec.pod_revision()));
    // What the router no longer routes to may go only once it runs this config: the ConfigMap
    // reaches its pod and is reloaded a moment after the apply, and until then requests still
    // arrive for the old adapter or revision.
    let router_current = router_runs(peer, &router_pods, &router_cm).await;

    // The servers' config: what serves now, plus, until the router runs its new config, the
    // adapters the previous config had (a server unloads what leaves its config file).
    let mut adapter_paths = BTreeMap::new();
    for (pod_rev, (spec, _)) in &by_pod {
        let Some(vols) = serving_vols.get(pod_rev) else {
            continue;
        };
        let mut adapters = vols.adapters.clone();
        if !router_current {
            let old = r.config_map(&ns, &build::serving_name(&name, pod_rev));
            for (k, v) in old
                .as_deref()
                .map(build::read_server_adapters)
                .unwrap_or_default()
            {
                adapters.entry(k).or_insert(v);
            }
        }
        let config = build::server_config(spec, &adapters, fault.as_ref());
        apply::apply(&cms, &build::server_config_map(md, pod_rev, &config)).await?;
        apply::apply(
            &deploys,
            &build::server_deployment(md, spec, vols, cfg, replicas),
        )
        .await?;
        adapter_paths.insert(pod_rev.clone(), adapters);
    }

    // Adapters on the pods: hot-load what serves now, unload what no longer does.
    let mut pod_lines = vec![];
    for (pod_rev, paths) in &adapter_paths {
        let pods_ = if *pod_rev == stable_spec.pod_revision() {
            &stable_pods
        } else {
            match &canary_pods {
                Some(p) => p,
                None => continue,
            }
        };
        pod_lines.extend(sync_adapters(peer, pods_, pod_rev, paths, router_current).await);
    }
    st.pods = pod_lines;
    let mut requeue = requeue_after(decision.requeue_after, router_current, router_pods.len());
    if let Some(a) = &md.spec.autoscaling {
        requeue = requeue.min(Duration::from(a.interval).max(Duration::from_secs(1)));
    }
    if !router_current {
        tracing::debug!(
            "router has not loaded its new config yet: old adapters and revisions stay"
        );
    }

    // Old revisions go: pods, Services and server configs of pod revisions no longer serving,
    // snapshots of revisions neither serving nor asked for.
    let live_pods: BTreeSet<String> = by_pod.keys().cloned().collect();
    if router_current {
        let server = ("app.kubernetes.io/name", "tailor-server");
        prune(
            &deploys,
            &r.deployments,
            &ns,
            &name,
            server,
            REVISION_LABEL,
            &live_pods,
        )
        .await?;
        prune(
            &svcs,
            &r.services,
            &ns,
            &name,
            server,
            REVISION_LABEL,
            &live_pods,
        )
        .await?;
        prune(
            &cms,
            &r.config_maps,
            &ns,
            &name,
            server,
            REVISION_LABEL,
            &live_pods,
        )
        .await?;
    }
    // The revisions the read status names stay until a status without them is read: an
    // operator stopped before its status write must find the stable snapshot it decides from.
    let live_revs: BTreeSet<String> = [
        Some(stable_rev.clone()),
        st.canary_revision.clone(),
        Some(desired_rev.clone()),
        prev.stable_revision.clone(),
        prev.canary_revision.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    prune(
        &cms,
        &r.config_maps,
        &ns,
        &name,
        (SNAPSHOT_LABEL, "true"),
        REVISION_LABEL,
        &live_revs,
    )
    .await?;

    // Status and Events.
    controller::write_status(ctx, md, &st).await?;
    for e in &decision.events {
        events::publish(
            ctx,
            &md.object_ref(&()),
            if e.warning {
                kube::runtime::events::EventType::Warning
            } else {
                kube::runtime::events::EventType::Normal
            },
            e.reason,
            &e.note,
            "Rollout",
        );
    }
    if let Some((reason, note)) = scaled_event {
        events::publish(
            ctx,
            &md.object_ref(&()),
            kube::runtime::events::EventType::Normal,
            reason,
            &note,
            "Autoscale",
        );
    }
    ctx.metrics
        .canary
        .observe(&ns, &name, st.canary_weight, decision.transition);
    Ok(Action::requeue(requeue))
}

/// When to look again: when the rollout says, or within a second while a ready router pod has
/// not loaded the new config yet (it reloads within a moment). With no router pod ready
/// (Pending, crash-looping) there is nothing to poll: a router pod becoming ready is a pod
/// event that brings the next pass, and polling 200 such deployments every second was most of
/// the operator's work (`scripts/bench-sim.sh deployments`).
fn requeue_after(decided: Duration, router_current: bool, ready_router_pods: usize) -> Duration {
    if router_current || ready_router_pods == 0 {
        decided
    } else {
        decided.min(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_router_that_lags_its_config_is_polled_every_second() {
        let decided = Duration::from_secs(30);
        assert_eq!(requeue_after(decided, true, 2), decided);
        assert_eq!(requeue_after(decided, false, 2), Duration::from_secs(1));
        assert_eq!(
            requeue_after(decided, false, 0),
            decided,
            "none ready: wait for a pod"
        );
        assert_eq!(
            requeue_after(Duration::from_millis(200), false, 1),
            Duration::from_millis(200)
        );
    }
}
