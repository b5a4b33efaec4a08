//! Dataset controller: raw JSONL → prepared splits on the artifact store, by a
//! `tailor-trainer prepare` Job the Dataset owns.
//!
//! Pipeline: dereference (the source ConfigMap) → validate (spec → [`build::Validated`]) →
//! build (pure: the Job, its config ConfigMap, the status) → apply (server-side apply) →
//! status (server-side apply on `/status`). Only the first and the last two touch the API.
//! A changed source or preparation spec hashes differently, so it runs a new prepare Job.

pub mod build;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tailor_api::conditions::{DEGRADED, READY};
use tailor_api::{Dataset, DatasetPhase};
use tracing::Instrument;

use crate::apply;
use crate::artifacts;
use crate::cache;
use crate::context::Context;
use crate::error::{Category, Error};
use crate::events;
use crate::jobs::{self, JOB_LABEL};
use build::{DATASET_LABEL, Observation, Summary};

pub const NAME: &str = "dataset";

/// The Dataset controller's reconcile context: the shared [`Context`] and the caches of its
/// prepare Jobs and pods (filled by the controller's own watches, see [`crate::cache`]).
pub struct Ctx {
    pub base: Arc<Context>,
    jobs: Store<Job>,
    pods: Store<Pod>,
}

impl std::ops::Deref for Ctx {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.base
    }
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (datasets, ds_writer) = reflector::store::<Dataset>();
    let (jobs, jobs_writer) = reflector::store::<Job>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let config = controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles);
    let main = cache::reflect_main(
        ds_writer,
        Api::<Dataset>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let ctx = Arc::new(Ctx {
        base: ctx,
        jobs,
        pods,
    });
    Controller::for_stream(main, datasets)
        .with_config(config)
        .owns_stream(cache::reflect(
            jobs_writer,
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels(DATASET_LABEL),
            cache::trim_job,
        ))
        // Prepare pods: their phase and termination message (the stats).
        .watches_stream(
            cache::reflect(
                pods_writer,
                Api::<Pod>::all(client),
                watcher::Config::default().labels(DATASET_LABEL),
                cache::trim_pod,
            ),
            |pod| {
                let ns = pod.namespace().unwrap_or_default();
                pod.labels()
                    .get(DATASET_LABEL)
                    .map(|n| ObjectRef::<Dataset>::new(n).within(&ns))
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

fn key(ds: &Dataset) -> String {
    format!(
        "{NAME}/{}/{}",
        ds.namespace().unwrap_or_default(),
        ds.name_any()
    )
}

fn error_policy(ds: Arc<Dataset>, err: &Error, ctx: Arc<Ctx>) -> Action {
    if err.category().is_transient() {
        Action::requeue(ctx.backoff(&key(&ds)))
    } else {
        Action::await_change()
    }
}

async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // The main store is ready before the first reconcile; the others may still be listing.
    if !(cache::is_ready(&ctx.jobs) && cache::is_ready(&ctx.pods)) {
        return Ok(Action::requeue(cache::NOT_READY_RETRY));
    }
    let _timer = ctx.metrics.reconcile(NAME);
    let span = tracing::info_span!("reconcile", controller = NAME, namespace = %ds.namespace().unwrap_or_default(), resource = %ds.name_any());
    let result = pipeline(&ds, &ctx).instrument(span).await;
    match &result {
        Ok(_) => ctx.succeeded(&key(&ds)),
        Err(e) => {
            tracing::warn!(controller = NAME, namespace = %ds.namespace().unwrap_or_default(), resource = %ds.name_any(), category = %e.category(), error = %e.chain(), "reconcile error");
            ctx.metrics.error(NAME, e.category());
            events::publish_error(&ctx, &ds.object_ref(&()), e).await;
        }
    }
    result
}

async fn pipeline(ds: &Dataset, ctx: &Ctx) -> Result<Action, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let cfg = &ctx.config;
    // Dereference.
    let fingerprint = match &ds.spec.source.config_map {
        Some(r) => {
            let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns);
            let cm = cms
                .get_opt(&r.name)
                .await
                .map_err(Error::kube(format!("reading ConfigMap {}", r.name)))?;
            let data = cm.as_ref().and_then(|cm| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| {
                        cm.binary_data
                            .as_ref()
                            .and_then(|d| d.get(&r.key))
                            .map(|b| b.0.clone())
                    })
            });
            match (cm, data) {
                (None, _) => {
                    let msg = format!(
                        "spec.source.configMap: ConfigMap {:?} not found in {ns}",
                        r.name
                    );
                    return blocked(ds, ctx, Category::SourceNotFound, msg).await;
                }
                (Some(_), None) => {
                    let msg = format!(
                        "spec.source.configMap: ConfigMap {:?} has no key {:?}",
                        r.name, r.key
                    );
                    return blocked(ds, ctx, Category::SourceNotFound, msg).await;
                }
                (Some(_), Some(d)) => Some(hex::encode(Sha256::digest(&d))),
            }
        }
        None => None,
    };
    // Validate.
    let v = match build::validate(ds, cfg, fingerprint.as_deref()) {
        Ok(v) => v,
        Err(Error::InvalidSpec(msg)) => return blocked(ds, ctx, Category::InvalidSpec, msg).await,
        Err(e) => return Err(e),
    };
    // Build and apply (the Job is immutable once created: apply only what is missing).
    let jobs_api = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    let job = match cache::get(&ctx.jobs, &ns, &v.job_name) {
        Some(j) => (*j).clone(),
        None => {
            let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns);
            apply::apply(&cms, &build::config_map(ds, &v)).await?;
            let j = apply::apply(&jobs_api, &build::job(ds, &v, cfg)).await?;
            tracing::info!(namespace = %ns, resource = %ds.name_any(), job = %v.job_name, "started prepare job");
            j
        }
    };
    // Observe.
    let state = jobs::job_state(&job);
    let pods = cache::pods_labelled(&ctx.pods, &ns, JOB_LABEL, &v.job_name);
    let pod = jobs::newest(&pods).map(jobs::pod_state);
    let obs = if state.complete {
        let from_pods = pods
            .iter()
            .map(jobs::pod_state)
            .filter(|p| p.phase == "Succeeded")
            .find_map(|p| {
                p.termination_message
                    .and_then(|m| serde_json::from_str::<Summary>(&m).ok())
            });
        match from_pods {
            // A shortened message lost invalid-line samples: stats.json has them all.
            Some(s) if s.truncated => {
                Observation::Prepared(read_stats(cfg, &v.prepared_uri).unwrap_or(s))
            }
            Some(s) => Observation::Prepared(s),
            None => Observation::Prepared(read_stats(cfg, &v.prepared_uri)?),
        }
    } else if let Some((reason, message)) = &state.failed {
        let pod_message = pods
            .iter()
            .map(jobs::pod_state)
            .find_map(|p| build::failure_message(p.termination_message.as_deref()));
        Observation::Failed {
            message: pod_message
                .unwrap_or_else(|| format!("prepare Job {}: {reason}: {message}", v.job_name)),
            stats: read_stats(cfg, &v.prepared_uri).ok(),
        }
    } else {
        Observation::Preparing { pod }
    };
    if matches!(obs, Observation::Failed { .. }) {
        ctx.metrics.error(NAME, Category::JobFailed);
    }
    let st = build::status(ds, Some(&v), &obs, Timestamp::now());
    write_status(ds, ctx, st).await?;
    Ok(match obs {
        Observation::Preparing { .. } => Action::requeue(Duration::from_secs(30)),
        // A ConfigMap source can change without the Dataset changing: look again now and then.
        Observation::Prepared(_) if ds.spec.source.config_map.is_some() => {
            Action::requeue(Duration::from_secs(300))
        }
        _ => Action::await_change(),
    })
}

fn read_stats(cfg: &crate::config::OperatorConfig, prepared_uri: &str) -> Result<Summary, Error> {
    let unavailable = |message: String| Error::Artifact {
        uri: format!("{prepared_uri}/stats.json"),
        message,
    };
    let dir = artifacts::operator_path(cfg, prepared_uri).map_err(unavailable)?;
    let bytes = std::fs::read(dir.join("stats.json")).map_err(|e| unavailable(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| unavailable(format!("invalid stats.json: {e}")))
}

async fn blocked(
    ds: &Dataset,
    ctx: &Context,
    category: Category,
    message: String,
) -> Result<Action, Error> {
    ctx.metrics.error(NAME, category);
    let st = build::status(
        ds,
        None,
        &Observation::Blocked { category, message },
        Timestamp::now(),
    );
    write_status(ds, ctx, st).await?;
    Ok(match category {
        Category::InvalidSpec => Action::await_change(),
        // The source is not watched: look for it again.
        _ => Action::requeue(Duration::from_secs(15)),
    })
}

async fn write_status(
    ds: &Dataset,
    ctx: &Context,
    st: tailor_api::DatasetStatus,
) -> Result<(), Error> {
    let prev = ds.status.clone().unwrap_or_default();
    if prev == st {
        return Ok(());
    }
    let api = Api::<Dataset>::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    apply::apply_status(&api, &ds.name_any(), &st).await?;
    if prev.phase != st.phase && st.phase == DatasetPhase::Ready {
        tracing::info!(namespace = %ds.namespace().unwrap_or_default(), resource = %ds.name_any(), "dataset ready");
    }
    events::publish_transitions(
        ctx,
        &ds.object_ref(&()),
        &prev.conditions,
        &st.conditions,
        &[READY, DEGRADED],
    )
    .await;
    Ok(())
}
