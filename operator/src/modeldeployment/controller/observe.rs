//! What the ModelDeployment controller reads and calls around its pipeline: the Secrets it
//! uses, the ready serving pods of a revision from the caches, the HTTP calls to servers and
//! routers (through [`super::super::clients`]), and the pruning of children no revision needs.

use super::*;

/// API keys from the Secret, one per line.
pub(super) async fn api_keys(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
) -> Result<Vec<String>, Error> {
    let Some(auth) = &md.spec.auth else {
        return Ok(vec![]);
    };
    let r = &auth.api_key_secret_ref;
    let bytes = crate::secrets::key(ctx, ns, "spec.auth.apiKeySecretRef", &r.name, &r.key).await?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The deployment's serving token (a Secret it owns, made once with a random value): servers
/// require it, the router sends it to them, and the operator uses it for their admin API and
/// the router's `/stats`.
pub(super) async fn serving_token(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
) -> Result<String, Error> {
    let name = build::token_secret_name(&md.name_any());
    let api = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    let read = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get(build::TOKEN_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .filter(|t| !t.is_empty())
    };
    if let Some(s) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("reading Secret {name}")))?
        && let Some(t) = read(&s)
    {
        return Ok(t);
    }
    let secret = build::token_secret(md, &new_token());
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => read(&s).ok_or_else(|| Error::Verification(format!("Secret {name} has no token"))),
        // Another pass made it first: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api
                .get(&name)
                .await
                .map_err(Error::kube(format!("reading Secret {name}")))?;
            read(&s).ok_or_else(|| Error::Verification(format!("Secret {name} has no token")))
        }
        Err(e) => Err(Error::apply(format!("Secret {name}"))(e)),
    }
}

/// 32 random bytes, hex.
pub(super) fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A serving pod that is ready, with its IP and what it holds.
pub(super) struct ServingPod {
    pub(super) name: String,
    pub(super) ip: String,
    pub(super) listed: Vec<pods::ServerAdapter>,
}

pub(super) fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Ctx {
    /// Ready serving pods of a pod revision: only pods of a ReplicaSet of the revision's own
    /// Deployment (a pod that merely carries the labels is not called), with the adapters each
    /// holds.
    pub(super) async fn serving_pods(
        &self,
        peer: Peer<'_>,
        ns: &str,
        md: &str,
        pod_revision: &str,
    ) -> Vec<ServingPod> {
        let rs_uids = self.replica_set_uids(ns, &build::serving_name(md, pod_revision));
        let mut found: Vec<(String, String)> = cache::pods_labelled(&self.pods, ns, MDEP_LABEL, md)
            .into_iter()
            .filter(|p| {
                p.labels().get(REVISION_LABEL).map(String::as_str) == Some(pod_revision)
                    && p.labels().get("app.kubernetes.io/name").map(String::as_str)
                        == Some("tailor-server")
                    && pod_ready(p)
                    && p.metadata.deletion_timestamp.is_none()
                    && rs_uids.iter().any(|uid| jobs::controlled_by(p, uid))
            })
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((p.name_any(), ip))
            })
            .collect();
        found.sort();
        clients::fan_out(found, |(name, ip)| async move {
            let listed = peer.list_adapters(&ip).await.unwrap_or_else(|e| {
                tracing::debug!(pod = %name, error = %e, "listing adapters");
                vec![]
            });
            ServingPod { name, ip, listed }
        })
        .await
    }

    /// The IPs of the ready router pods (of the router Deployment's own ReplicaSets).
    pub(super) fn router_pods(&self, ns: &str, md: &str) -> Vec<String> {
        let uids = self.replica_set_uids(ns, &build::router_name(md));
        let mut ips: Vec<String> = cache::pods_labelled(&self.pods, ns, MDEP_LABEL, md)
            .into_iter()
            .filter(|p| {
                p.labels().get("app.kubernetes.io/name").map(String::as_str)
                    == Some("tailor-router")
                    && pod_ready(p)
                    && p.metadata.deletion_timestamp.is_none()
                    && uids.iter().any(|uid| jobs::controlled_by(p, uid))
            })
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.sort();
        ips
    }

    /// The uids of the ReplicaSets the Deployment `name` controls.
    pub(super) fn replica_set_uids(&self, ns: &str, name: &str) -> BTreeSet<String> {
        let Some(dep_uid) =
            cache::get(&self.deployments, ns, name).and_then(|d| d.metadata.uid.clone())
        else {
            return BTreeSet::new();
        };
        self.replica_sets
            .state()
            .iter()
            .filter(|rs| rs.namespace().as_deref() == Some(ns))
            .filter(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && o.uid == dep_uid)
            })
            .filter_map(|rs| rs.metadata.uid.clone())
            .collect()
    }

    pub(super) fn config_map(&self, ns: &str, name: &str) -> Option<Arc<ConfigMap>> {
        cache::get(&self.config_maps, ns, name)
    }
}

pub(super) fn readiness_of(pods_: &[ServingPod], replicas: i32, spec: &RevisionSpec) -> Readiness {
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
pub(super) async fn sync_adapters(
    peer: Peer<'_>,
    pods_: &[ServingPod],
    pod_revision: &str,
    desired: &BTreeMap<String, String>,
    unload: bool,
) -> Vec<PodAdapters> {
    // Collected: a lazy iterator over borrowed pods held across the awaits below makes the
    // reconcile future's Send proof fail.
    let plans: Vec<_> = pods_
        .iter()
        .map(|p| {
            let mut plan = pods::load_plan(&p.listed, desired);
            if !unload {
                plan.unload.clear();
            }
            (p.name.clone(), p.ip.clone(), p.listed.clone(), plan)
        })
        .collect();
    clients::fan_out(plans, |(name, ip, listed, plan)| async move {
        let errors = peer.apply_plan(&ip, &plan).await;
        let listed = if plan == pods::LoadPlan::default() {
            listed
        } else {
            peer.list_adapters(&ip).await.unwrap_or_default()
        };
        pods::pod_status(&name, pod_revision, &listed, &errors)
    })
    .await
}

/// Every router pod's `/stats` over `window` (each counts only what it proxied); the pods that
/// did not answer are left out.
pub(super) async fn router_stats(
    peer: Peer<'_>,
    router_pods: &[String],
    window: Duration,
) -> Vec<stats::Stats> {
    clients::fan_out(router_pods.to_vec(), |ip| async move {
        peer.router_stats(&ip, window)
            .await
            .map_err(|e| tracing::warn!(error = %e, "router stats"))
            .ok()
    })
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// The autoscaling metric summed over `pods` (those that answered): for in-flight requests,
/// each pod's mean since the last reading (the rate of its busy seconds), at least what it has
/// in flight now; for the queue, what waits now.
pub(super) async fn read_load(
    peer: Peer<'_>,
    a: &tailor_api::Autoscaling,
    pods_: &[&ServingPod],
    busy: &std::sync::Mutex<BTreeMap<String, (std::time::Instant, f64)>>,
    key: &str,
) -> autoscale::Reading {
    let queue_only = a.target_in_flight_per_replica.is_none();
    let named: Vec<(String, String)> = pods_
        .iter()
        .map(|p| (p.name.clone(), p.ip.clone()))
        .collect();
    let answers = clients::fan_out(named, |(name, ip)| async move {
        let load = peer
            .server_load(&ip)
            .await
            .map_err(|e| tracing::debug!(error = %e, "reading a server's load"))
            .ok();
        (name, load, std::time::Instant::now())
    })
    .await;
    let mut memory = busy.lock().unwrap_or_else(|e| e.into_inner());
    // Pods of this deployment that are gone are forgotten.
    memory.retain(|k, _| {
        !k.starts_with(key) || answers.iter().any(|(n, _, _)| k[key.len()..] == **n)
    });
    let mut loads = vec![];
    for (name, load, at) in answers {
        let Some(l) = load else { continue };
        if queue_only {
            loads.push(l.waiting);
            continue;
        }
        let now = l.running + l.waiting;
        let mean = l.busy_seconds.and_then(|b| {
            let previous = memory.insert(format!("{key}{name}"), (at, b));
            autoscale::mean_in_flight(previous, (at, b))
        });
        loads.push(mean.map_or(now, |m| m.max(now)));
    }
    autoscale::Reading {
        load: (!loads.is_empty()).then(|| loads.iter().sum()),
        measured_pods: u32::try_from(loads.len()).unwrap_or(u32::MAX),
    }
}

/// Whether every ready router pod has loaded the config in `cm` (each one's `/stats` reports
/// the SHA-256 of the file it runs).
pub(super) async fn router_runs(peer: Peer<'_>, router_pods: &[String], cm: &ConfigMap) -> bool {
    let Some(text) = cm
        .data
        .as_ref()
        .and_then(|d| d.get(build::ROUTER_CONFIG_KEY))
    else {
        return false;
    };
    let answers = router_stats(peer, router_pods, Duration::from_secs(1)).await;
    answers.len() == router_pods.len() && stats::all_run(&answers, text)
}

pub(super) async fn analysis_window(
    ctx: &Context,
    peer: Peer<'_>,
    md: &ModelDeployment,
    router_pods: &[String],
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
        let cq = clients::prom_queries(&ns, &name, &build::canary_target(canary), secs);
        let sq = clients::prom_queries(&ns, &name, &build::stable_target(stable), secs);
        let c = clients::prom_sample(&ctx.http, &p.address, &cq, canary).await;
        let s = clients::prom_sample(&ctx.http, &p.address, &sq, stable).await;
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
    let pods = router_stats(peer, router_pods, window).await;
    stats::window_over_pods(&pods, stable, canary).map(|(c, s)| Window {
        canary: c,
        stable: s,
        query: None,
    })
}

pub(super) fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None")
}

/// Deletes the children of `kind` labelled for this ModelDeployment (and `extra`) whose label
/// `label` is not in `keep` (old revisions after a promotion or rollback), as the cache lists
/// them.
pub(super) async fn prune<K>(
    api: &Api<K>,
    store: &Store<K>,
    ns: &str,
    md: &str,
    extra: (&str, &str),
    label: &str,
    keep: &BTreeSet<String>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let old: Vec<String> = store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .filter(|o| {
            let l = o.labels();
            l.get(MDEP_LABEL).map(String::as_str) == Some(md)
                && l.get(extra.0).map(String::as_str) == Some(extra.1)
                && !keep.contains(l.get(label).map(String::as_str).unwrap_or_default())
        })
        .map(|o| o.name_any())
        .collect();
    for name in old {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::kube(format!("deleting {} {name}", K::kind(&())))(e)),
        }
    }
    Ok(())
}
