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

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};
use tailor_api::{Dataset, DatasetPhase};

use crate::apply;
use crate::cache;
use crate::context::Context;
use crate::controller;
use crate::error::{Category, Error};
use crate::inputs;
use crate::jobs::{self, JOB_LABEL};
use build::{DATASET_LABEL, Observation, Summary};

pub const NAME: &str = "dataset";

/// The Dataset controller: the shared [`Context`] and the caches of its prepare Jobs and pods
/// (filled by the controller's own watches, see [`crate::cache`]).
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

impl controller::Reconciler for Ctx {
    type K = Dataset;
    const NAME: &'static str = NAME;
    fn context(&self) -> &Context {
        &self.base
    }
    fn caches_ready(&self) -> bool {
        cache::is_ready(&self.jobs) && cache::is_ready(&self.pods)
    }
    async fn reconcile(&self, ds: &Dataset) -> Result<Action, Error> {
        pipeline(ds, self).await
    }
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (jobs, jobs_writer) = reflector::store::<Job>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (c, _) = controller::new::<Dataset>(client.clone());
    let c = c
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
                    .map(|n| ObjectRef::new(n).within(&ns))
            },
        );
    controller::run(
        c,
        Arc::new(Ctx {
            base: ctx,
            jobs,
            pods,
        }),
    )
    .await;
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
            // A fetch would wait on a missing credentials Secret in a pod; say so here.
            let secret = ds.spec.source.credentials_secret_ref.as_ref();
            match inputs::credentials(ctx, &ns, "spec.source.credentialsSecretRef", secret).await {
                Ok(_) => {}
                Err(Error::SecretNotFound(msg)) => {
                    return blocked(ds, ctx, Category::SecretNotFound, msg).await;
                }
                Err(e) => return Err(e),
            }
            let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns);
            apply::apply(&cms, &build::config_map(ds, &v)).await?;
            let j = apply::apply(&jobs_api, &build::job(ds, &v, cfg)).await?;
            tracing::info!(namespace = %ns, resource = %ds.name_any(), job = %v.job_name, "started prepare job");
            j
        }
    };
    // Observe.
    let state = jobs::job_state(&job);
    // Only the Job's own pods: a pod that merely carries its labels is not believed.
    let job_uid = job.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<_> = cache::pods_labelled(&ctx.pods, &ns, JOB_LABEL, &v.job_name)
        .into_iter()
        .filter(|p| jobs::controlled_by(p, &job_uid))
        .collect();
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
                Observation::Prepared(read_stats(ctx, &ns, &v.prepared_uri).await.unwrap_or(s))
            }
            Some(s) => Observation::Prepared(s),
            None => Observation::Prepared(read_stats(ctx, &ns, &v.prepared_uri).await?),
        }
    } else if let Some((reason, message)) = &state.failed {
        let pod_message = jobs::fetch_failure(&pods)
            .map(|f| format!("fetching the source: {f}"))
            .or_else(|| {
                pods.iter()
                    .map(jobs::pod_state)
                    .find_map(|p| build::failure_message(p.termination_message.as_deref()))
            });
        Observation::Failed {
            message: pod_message
                .unwrap_or_else(|| format!("prepare Job {}: {reason}: {message}", v.job_name)),
            stats: read_stats(ctx, &ns, &v.prepared_uri).await.ok(),
        }
    } else {
        Observation::Preparing {
            pod,
            awaiting_admission: state.awaiting_admission.clone(),
        }
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

async fn read_stats(ctx: &Context, ns: &str, prepared_uri: &str) -> Result<Summary, Error> {
    let unavailable = |message: String| Error::Artifact {
        uri: format!("{prepared_uri}/stats.json"),
        message,
    };
    // Written by a pod of the tenant's: bounded (a well-formed one is a few KiB).
    let bytes = crate::stored::Stored::open(ctx, ns, prepared_uri)
        .await
        .map_err(unavailable)?
        .read("stats.json", crate::endpoints::SMALL_BODY)
        .await
        .map_err(unavailable)?;
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
    let prev_phase = ds.status.as_ref().map(|s| s.phase);
    if controller::write_status(ctx, ds, &st).await?
        && prev_phase != Some(st.phase)
        && st.phase == DatasetPhase::Ready
    {
        tracing::info!(namespace = %ds.namespace().unwrap_or_default(), resource = %ds.name_any(), "dataset ready");
    }
    Ok(())
}
