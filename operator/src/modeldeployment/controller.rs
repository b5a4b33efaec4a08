//! The ModelDeployment controller: the I/O around the pure pipeline (see the module header).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tailor_api::conditions::{DEGRADED, READY};
use tailor_api::{LoraAdapter, LoraAdapterPhase, MetricsSource, ModelDeployment, PodAdapters};
use tracing::Instrument;

use super::analysis::Sample;
use super::build::{self, MDEP_LABEL, REVISION_LABEL, SNAPSHOT_LABEL, Side};
use super::revision::{ResolvedAdapter, RevisionSpec};
use super::rollout::{self, Readiness, Window};
use super::{NAME, gate, pods, stats};
use crate::apply;
use crate::context::Context;
use crate::error::{Error, truncate};
use crate::events;

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let children = || watcher::Config::default().labels(MDEP_LABEL);
    let controller = Controller::new(
        Api::<ModelDeployment>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    // A LoraAdapter becoming Ready (its job just finished) is what a waiting deployment needs:
    // look again at once rather than at the next back-off.
    let deployments = controller.store();
    controller
        .owns(Api::<Deployment>::all(client.clone()), children())
        .watches(
            Api::<LoraAdapter>::all(client.clone()),
            watcher::Config::default(),
            move |la: LoraAdapter| {
                let ns = la.namespace();
                let name = la.name_any();
                deployments
                    .state()
                    .into_iter()
                    .filter(|md| {
                        md.namespace() == ns
                            && md.spec.adapters.iter().any(|a| a.adapter_ref.name == name)
                    })
                    .map(|md| ObjectRef::from_obj(&*md))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = NAME, error = %e, "reconcile failed");
            }
        })
        .await;
}

fn key(md: &ModelDeployment) -> String {
    format!(
        "{NAME}/{}/{}",
        md.namespace().unwrap_or_default(),
        md.name_any()
    )
}

fn error_policy(md: Arc<ModelDeployment>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.category().is_transient() {
        Action::requeue(ctx.backoff(&key(&md)))
    } else {
        Action::await_change()
    }
}

async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(NAME);
    let span = tracing::info_span!("reconcile", controller = NAME, namespace = %md.namespace().unwrap_or_default(), resource = %md.name_any());
    let result = pipeline(&md, &ctx).instrument(span).await;
    match &result {
        Ok(_) => ctx.succeeded(&key(&md)),
        Err(e) => {
            tracing::warn!(controller = NAME, namespace = %md.namespace().unwrap_or_default(), resource = %md.name_any(), category = %e.category(), error = %e.chain(), "reconcile error");
            ctx.metrics.error(NAME, e.category());
            events::publish_error(&ctx, &md.object_ref(&()), e).await;
        }
    }
    result
}

/// The LoraAdapters the spec names, resolved. A missing or unverified adapter is waited for
/// (transient: its FineTuneJob may still be writing it).
async fn resolve_adapters(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
) -> Result<Vec<ResolvedAdapter>, Error> {
    let api = Api::<LoraAdapter>::namespaced(ctx.client.clone(), ns);
    let mut out = vec![];
    for a in &md.spec.adapters {
        let name = &a.adapter_ref.name;
        let la = api
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("reading LoraAdapter {name}")))?
            .ok_or_else(|| Error::Artifact {
                uri: format!("LoraAdapter {name}"),
                message: format!(
                    "adapter {:?} refers to LoraAdapter {name}, which does not exist (yet)",
                    a.name
                ),
            })?;
        let st = la.status.clone().unwrap_or_default();
        if st.phase != LoraAdapterPhase::Ready {
            return Err(Error::Artifact {
                uri: la.spec.uri.clone(),
                message: format!("LoraAdapter {name} is {:?}, not Ready", st.phase),
            });
        }
        let lineage = st.lineage.unwrap_or_default();
        out.push(ResolvedAdapter {
            served_name: a.name.clone(),
            adapter: name.clone(),
            uri: la.spec.uri.clone(),
            sha256: la.spec.sha256.clone(),
            validation_loss: lineage.validation_loss,
            base_validation_loss: lineage.base_validation_loss,
        });
    }
    Ok(out)
}

/// API keys from the Secret, one per line.
async fn api_keys(md: &ModelDeployment, ctx: &Context, ns: &str) -> Result<Vec<String>, Error> {
    let Some(auth) = &md.spec.auth else {
        return Ok(vec![]);
    };
    let r = &auth.api_key_secret_ref;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&r.name)
        .await
        .map_err(Error::kube(format!("reading Secret {}", r.name)))?
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "spec.auth.apiKeySecretRef: Secret {} not found",
                r.name
            ))
        })?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "spec.auth.apiKeySecretRef: Secret {} has no key {:?}",
                r.name, r.key
            ))
        })?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect())
}

/// A serving pod that is ready, with its IP.
struct ServingPod {
    name: String,
    ip: String,
    listed: Vec<pods::ServerAdapter>,
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn admin_list(ctx: &Context, ip: &str) -> Result<Vec<pods::ServerAdapter>, String> {
    let url = format!("http://{ip}:{}/admin/adapters", build::SERVER_PORT);
    let resp = ctx
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    pods::parse_adapters(&body)
}

/// Ready serving pods of a pod revision and the adapters each holds.
async fn serving_pods(
    ctx: &Context,
    ns: &str,
    md: &str,
    pod_revision: &str,
) -> Result<Vec<ServingPod>, Error> {
    let selector = format!(
        "{MDEP_LABEL}={md},{REVISION_LABEL}={pod_revision},app.kubernetes.io/name=tailor-server"
    );
    let list = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("listing serving pods"))?;
    let mut out = vec![];
    for p in list
        .items
        .iter()
        .filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
    {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let listed = admin_list(ctx, &ip).await.unwrap_or_default();
        out.push(ServingPod {
            name: p.name_any(),
            ip,
            listed,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn readiness_of(pods_: &[ServingPod], replicas: i32, spec: &RevisionSpec) -> Readiness {
    let names: Vec<String> = spec.adapters.iter().map(|a| a.adapter.clone()).collect();
    let view: Vec<(&str, &[pods::ServerAdapter])> = pods_
        .iter()
        .map(|p| (p.name.as_str(), p.listed.as_slice()))
        .collect();
    pods::readiness(&view, replicas, &names)
}

/// Loads and unloads adapters on every ready pod so each holds `desired`; returns the pods'
/// status lines. Unloading waits (`unload` false) until the router runs a config that no
/// longer sends requests to what would be unloaded.
async fn sync_adapters(
    ctx: &Context,
    pods_: &[ServingPod],
    pod_revision: &str,
    desired: &BTreeMap<String, String>,
    unload: bool,
) -> Vec<PodAdapters> {
    let mut out = vec![];
    for p in pods_ {
        let mut plan = pods::load_plan(&p.listed, desired);
        if !unload {
            plan.unload.clear();
        }
        let mut errors = BTreeMap::new();
        let base = format!("http://{}:{}/admin/adapters", p.ip, build::SERVER_PORT);
        for (name, path) in &plan.load {
            let body = serde_json::json!({"name": name, "path": path});
            match ctx.http.post(&base).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    errors.insert(name.clone(), truncate(&format!("{status}: {text}"), 300));
                }
                Err(e) => {
                    errors.insert(name.clone(), truncate(&e.to_string(), 300));
                }
            }
        }
        for name in &plan.unload {
            if let Err(e) = ctx.http.delete(format!("{base}/{name}")).send().await {
                tracing::warn!(pod = %p.name, adapter = %name, error = %e, "unloading adapter");
            }
        }
        let listed = if plan == pods::LoadPlan::default() {
            p.listed.clone()
        } else {
            admin_list(ctx, &p.ip).await.unwrap_or_default()
        };
        out.push(pods::pod_status(&p.name, pod_revision, &listed, &errors));
    }
    out
}

async fn router_stats(
    ctx: &Context,
    router_ip: &str,
    window: Duration,
) -> Result<stats::Stats, String> {
    let url = format!(
        "http://{router_ip}:{}/stats?window={}s",
        build::ROUTER_ADMIN_PORT,
        window.as_secs().max(1)
    );
    let resp = ctx
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    stats::parse(&body)
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant query; the value of its single sample (0 when empty).
async fn prom_scalar(ctx: &Context, address: &str, query: &str) -> Result<Option<f64>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        address.trim_end_matches('/'),
        percent_encode(query)
    );
    let resp = ctx
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let v: serde_json::Value = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    Ok(result
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|x| x.is_finite()))
}

/// Prometheus queries for one target over the window, recorded in status.
fn prom_queries(ns: &str, md: &str, target: &str, secs: u64) -> [String; 3] {
    let sel = format!("namespace=\"{ns}\", modeldeployment=\"{md}\", target=\"{target}\"");
    [
        format!("sum(increase(tailor_router_requests_total{{{sel}}}[{secs}s]))"),
        format!("sum(increase(tailor_router_errors_total{{{sel}}}[{secs}s]))"),
        format!(
            "histogram_quantile(0.95, sum by (le) (rate(tailor_router_request_duration_seconds_bucket{{{sel}}}[{secs}s])))"
        ),
    ]
}

async fn prom_sample(
    ctx: &Context,
    address: &str,
    queries: &[String; 3],
    revision: &str,
) -> Result<Sample, String> {
    let requests = prom_scalar(ctx, address, &queries[0]).await?.unwrap_or(0.0);
    let errors = prom_scalar(ctx, address, &queries[1]).await?.unwrap_or(0.0);
    let p95 = prom_scalar(ctx, address, &queries[2]).await?;
    Ok(Sample {
        revision: revision.to_string(),
        requests: requests.round().max(0.0) as u64,
        errors: errors.round().max(0.0) as u64,
        p95_seconds: p95,
    })
}

async fn analysis_window(
    ctx: &Context,
    md: &ModelDeployment,
    router_ip: Option<&str>,
    stable: &str,
    canary: &str,
    window: Duration,
) -> Option<Window> {
    let a = &md.spec.rollout.analysis;
    if a.metrics_source == MetricsSource::Prometheus
        && let Some(p) = &a.prometheus
    {
        let ns = md.namespace().unwrap_or_default();
        let name = md.name_any();
        let secs = window.as_secs().max(1);
        let cq = prom_queries(&ns, &name, &build::canary_target(canary), secs);
        let sq = prom_queries(&ns, &name, &build::stable_target(stable), secs);
        let c = prom_sample(ctx, &p.address, &cq, canary).await;
        let s = prom_sample(ctx, &p.address, &sq, stable).await;
        return match (c, s) {
            (Ok(c), Ok(s)) => Some(Window {
                canary: c,
                stable: Some(s),
                query: Some(cq.join("; ")),
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "prometheus analysis query");
                None
            }
        };
    }
    let ip = router_ip?;
    match router_stats(ctx, ip, window).await {
        Ok(st) => stats::window(&st, stable, canary).map(|(c, s)| Window {
            canary: c,
            stable: s,
            query: None,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "router stats");
            None
        }
    }
}

fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None")
}

async fn publish(ctx: &Context, md: &ModelDeployment, e: &rollout::Event) {
    let ev = KubeEvent {
        type_: if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: e.reason.to_string(),
        note: Some(truncate(&e.note, 1000)),
        action: "Rollout".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&ev, &md.object_ref(&())).await {
        tracing::warn!(error = %err, reason = e.reason, "publishing event");
    }
}

/// Deletes children of `kind` labelled for this ModelDeployment whose label `label` is not in
/// `keep` (old revisions after a promotion or rollback).
async fn prune<K>(
    api: &Api<K>,
    md: &str,
    extra: &str,
    label: &str,
    keep: &BTreeSet<String>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let selector = format!("{MDEP_LABEL}={md},{extra}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("listing {}s", K::kind(&()))))?;
    for obj in list.items {
        let value = obj.labels().get(label).cloned().unwrap_or_default();
        if !keep.contains(&value) {
            let name = obj.name_any();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if crate::error::is_not_found(&e) => {}
                Err(e) => return Err(Error::kube(format!("deleting {} {name}", K::kind(&())))(e)),
            }
        }
    }
    Ok(())
}

async fn pipeline(md: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    if md.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change()); // children are owned: garbage collection removes them
    }
    let ns = md.namespace().unwrap_or_default();
    let name = md.name_any();
    if name.len() > 40 {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} is {} characters; ModelDeployment names may be at most 40 so that child names stay valid",
            name.len()
        )));
    }
    let client = ctx.client.clone();
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let deploys = Api::<Deployment>::namespaced(client.clone(), &ns);
    let svcs = Api::<Service>::namespaced(client.clone(), &ns);
    let api = Api::<ModelDeployment>::namespaced(client.clone(), &ns);
    let cfg = &ctx.config;
    let prev = md.status.clone().unwrap_or_default();
    let now = Timestamp::now();

    // Dereference and validate: what the desired revision serves.
    let desired = RevisionSpec::new(&md.spec, resolve_adapters(md, ctx, &ns).await?);
    let desired_rev = desired.revision();
    let keys = api_keys(md, ctx, &ns).await?;
    apply::apply(&cms, &build::snapshot_config_map(md, &desired)).await?;

    // The stable revision's spec from its snapshot (the spec may have moved on).
    let mut previous = prev.clone();
    let mut stable_spec = None;
    if let Some(s) = &prev.stable_revision {
        if *s == desired_rev {
            stable_spec = Some(desired.clone());
        } else {
            let snap = cms
                .get_opt(&build::snapshot_name(&name, s))
                .await
                .map_err(Error::kube("reading revision snapshot"))?;
            stable_spec = snap.as_ref().and_then(build::read_snapshot);
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
    let stable_pods = serving_pods(ctx, &ns, &name, &stable_spec.pod_revision()).await?;
    let canary_pods = match &canary_spec {
        Some(c) if c.pod_revision() != stable_spec.pod_revision() => {
            Some(serving_pods(ctx, &ns, &name, &c.pod_revision()).await?)
        }
        _ => None,
    };
    let router_svc = svcs
        .get_opt(&build::endpoint_service_name(&name))
        .await
        .map_err(Error::kube("reading router Service"))?;
    let router_ip = router_svc.as_ref().and_then(cluster_ip);
    let router_ready = deploys
        .get_opt(&build::router_name(&name))
        .await
        .map_err(Error::kube("reading router Deployment"))?
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        > 0;
    let mut stable_ready = readiness_of(&stable_pods, md.spec.replicas, &stable_spec);
    if stable_ready.ready && !router_ready {
        stable_ready = Readiness::not_ready("router not ready");
    }
    let canary_ready = match &canary_spec {
        Some(c) => readiness_of(
            canary_pods.as_deref().unwrap_or(&stable_pods),
            md.spec.replicas,
            c,
        ),
        None => Readiness::default(),
    };
    let gate = match &canary_spec {
        Some(c) => gate::gate(md.spec.rollout.require_better_than_base, &stable_spec, c),
        None => rollout::Gate::NotRequired,
    };
    let window = match (
        rollout::analysis_window(&md.spec.rollout, &previous, &desired_rev, now),
        &plan.canary,
    ) {
        (Some(w), Some(c)) => {
            analysis_window(ctx, md, router_ip.as_deref(), &plan.stable, c, w).await
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
    let fault = build::fault_injection(md);
    let mut backends = BTreeMap::new();
    let mut serving_vols = BTreeMap::new();
    for (pod_rev, (spec, uris)) in &by_pod {
        let cm_name = build::serving_name(&name, pod_rev);
        let vols = build::serving_volumes(cfg, &cm_name, &spec.pods.base_model_uri, uris)
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
    apply::apply(&deploys, &build::router_deployment(md, cfg)).await?;
    let router_svc = apply::apply(&svcs, &build::router_service(md)).await?;
    let router_ip = cluster_ip(&router_svc).or(router_ip);
    st.endpoint = router_ip
        .as_ref()
        .map(|ip| format!("http://{ip}:{}/v1", build::ROUTER_PORT));
    // What the router no longer routes to may go only once it runs this config: the ConfigMap
    // reaches its pod and is reloaded a moment after the apply, and until then requests still
    // arrive for the old adapter or revision.
    let router_current = match &router_ip {
        Some(ip) => router_runs(ctx, ip, &router_cm).await,
        None => false,
    };

    // The servers' config: what serves now, plus, until the router runs its new config, the
    // adapters the previous config had (a server unloads what leaves its config file).
    let mut adapter_paths = BTreeMap::new();
    for (pod_rev, (spec, _)) in &by_pod {
        let Some(vols) = serving_vols.get(pod_rev) else {
            continue;
        };
        let mut adapters = vols.adapters.clone();
        if !router_current {
            let old = cms
                .get_opt(&build::serving_name(&name, pod_rev))
                .await
                .map_err(Error::kube("reading server config"))?;
            for (k, v) in old
                .as_ref()
                .map(build::read_server_adapters)
                .unwrap_or_default()
            {
                adapters.entry(k).or_insert(v);
            }
        }
        let config = build::server_config(spec, &adapters, fault.as_ref());
        apply::apply(&cms, &build::server_config_map(md, pod_rev, &config)).await?;
        apply::apply(&deploys, &build::server_deployment(md, spec, vols, cfg)).await?;
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
        pod_lines.extend(sync_adapters(ctx, pods_, pod_rev, paths, router_current).await);
    }
    st.pods = pod_lines;
    let mut requeue = decision.requeue_after;
    if !router_current {
        requeue = requeue.min(Duration::from_secs(1));
        tracing::debug!(
            "router has not loaded its new config yet: old adapters and revisions stay"
        );
    }

    // Old revisions go: pods, Services and server configs of pod revisions no longer serving,
    // snapshots of revisions neither serving nor asked for.
    let live_pods: BTreeSet<String> = by_pod.keys().cloned().collect();
    if router_current {
        prune_pod_revisions(&deploys, &svcs, &cms, &name, &live_pods).await?;
    }
    let live_revs: BTreeSet<String> = [
        Some(stable_rev.clone()),
        st.canary_revision.clone(),
        Some(desired_rev.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    prune(
        &cms,
        &name,
        &format!("{SNAPSHOT_LABEL}=true"),
        REVISION_LABEL,
        &live_revs,
    )
    .await?;

    // Status and Events.
    if st != prev {
        apply::apply_status(&api, &name, &st).await?;
        events::publish_transitions(
            ctx,
            &md.object_ref(&()),
            &prev.conditions,
            &st.conditions,
            &[READY, DEGRADED],
        )
        .await;
    }
    for e in &decision.events {
        publish(ctx, md, e).await;
    }
    ctx.metrics
        .canary
        .observe(&ns, &name, st.canary_weight, decision.transition);
    Ok(Action::requeue(requeue))
}

/// Whether the router has loaded the config in `cm` (its `/stats` reports the file's SHA-256).
async fn router_runs(ctx: &Context, router_ip: &str, cm: &ConfigMap) -> bool {
    let Some(text) = cm
        .data
        .as_ref()
        .and_then(|d| d.get(build::ROUTER_CONFIG_KEY))
    else {
        return false;
    };
    match router_stats(ctx, router_ip, Duration::from_secs(1)).await {
        Ok(st) => st.config.sha256 == stats::config_sha256(text),
        Err(e) => {
            tracing::debug!(error = %e, "router stats");
            false
        }
    }
}

/// Deletes the serving Deployments, Services and server ConfigMaps of pod revisions no longer
/// serving.
async fn prune_pod_revisions(
    deploys: &Api<Deployment>,
    svcs: &Api<Service>,
    cms: &Api<ConfigMap>,
    name: &str,
    live_pods: &BTreeSet<String>,
) -> Result<(), Error> {
    let server = "app.kubernetes.io/name=tailor-server";
    prune(deploys, name, server, REVISION_LABEL, live_pods).await?;
    prune(svcs, name, server, REVISION_LABEL, live_pods).await?;
    prune(cms, name, server, REVISION_LABEL, live_pods).await
}
