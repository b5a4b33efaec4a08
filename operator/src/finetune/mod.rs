//! FineTuneJob controller: a LoRA training run as a `tailor-trainer train` Job.
//!
//! Pipeline: dereference (the Dataset, the current train Job and its pods) → validate (the
//! dataset gate and the spec, into [`build::Validated`]) → build (pure: Job, config, status,
//! LoraAdapter) → apply (server-side apply) → status. While the trainer runs, its `/progress`
//! is polled every `progressIntervalSeconds` into `status.progress`; the final summary comes
//! from the pod's termination message (or `metrics.json`), so a missed poll loses nothing.
//!
//! Reconciles read the Dataset, the train Job and its pods from caches that the controller's own
//! watches fill (see [`crate::cache`]); they write only what changed.
//!
//! The Job name is a hash of what it was built from, so a restarted operator finds the Job it
//! created rather than creating another. A spec change before the run started replaces the
//! Job. A spec change mid-run (anything but `suspend`) cancels the running attempt — phase
//! Cancelled, reason `SpecChanged` on Ready and an Event naming the cancelled Job — and the next
//! pass starts a new run for the new generation, in outputs of its own (a checkpoint of another
//! spec is never resumed). Suspending and resuming continue the same run.

pub mod build;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tailor_api::conditions::{DATASET_READY, DEGRADED, READY, SCHEDULED};
use tailor_api::{Checkpoint, Dataset, FineTuneJob, FineTuneJobPhase, LoraAdapter};
use tracing::Instrument;

use crate::apply;
use crate::artifacts;
use crate::cache;
use crate::context::Context;
use crate::error::{Category, Error, is_not_found};
use crate::events;
use crate::jobs::{self, JOB_LABEL, SPEC_HASH};
use build::{
    AdapterArtifact, AfterEnd, DatasetGate, FTJ_LABEL, Observed, TrainSummary, TrainerProgress,
};

pub const NAME: &str = "finetunejob";

/// The FineTuneJob controller's reconcile context: the shared [`Context`] and the caches of
/// what its reconciles read (filled by the controller's own watches, see [`crate::cache`]).
pub struct Ctx {
    pub base: Arc<Context>,
    datasets: Store<Dataset>,
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
    let (ftjs, ftj_writer) = reflector::store::<FineTuneJob>();
    let (datasets, ds_writer) = reflector::store::<Dataset>();
    let (jobs, jobs_writer) = reflector::store::<Job>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let main = cache::reflect_main(
        ftj_writer,
        Api::<FineTuneJob>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let by_dataset = ftjs.clone();
    let config = controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles);
    let ctx = Arc::new(Ctx {
        base: ctx,
        datasets,
        jobs,
        pods,
    });
    Controller::for_stream(main, ftjs)
        .with_config(config)
        .owns_stream(cache::reflect(
            jobs_writer,
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels(FTJ_LABEL),
            cache::trim_job,
        ))
        // A job waiting for its Dataset proceeds the moment the Dataset becomes Ready.
        .watches_stream(
            cache::reflect(
                ds_writer,
                Api::<Dataset>::all(client.clone()),
                watcher::Config::default(),
                // The gate reads status and generation; inline data can be large.
                |ds: &mut Dataset| ds.spec.source.inline = None,
            ),
            move |ds| {
                let ns = ds.namespace();
                let name = ds.name_any();
                by_dataset
                    .state()
                    .into_iter()
                    .filter(|f| f.namespace() == ns && f.spec.dataset_ref.name == name)
                    .map(|f| ObjectRef::from_obj(&*f))
                    .collect::<Vec<_>>()
            },
        )
        // Scheduling, start and end of trainer pods: Queued → Running is seen the moment the
        // pod is scheduled, not at the next poll.
        .watches_stream(
            cache::reflect(
                pods_writer,
                Api::<Pod>::all(client),
                watcher::Config::default().labels(FTJ_LABEL),
                cache::trim_pod,
            ),
            |pod| {
                let ns = pod.namespace().unwrap_or_default();
                pod.labels()
                    .get(FTJ_LABEL)
                    .map(|n| ObjectRef::<FineTuneJob>::new(n).within(&ns))
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

fn key(ftj: &FineTuneJob) -> String {
    format!(
        "{NAME}/{}/{}",
        ftj.namespace().unwrap_or_default(),
        ftj.name_any()
    )
}

fn error_policy(ftj: Arc<FineTuneJob>, err: &Error, ctx: Arc<Ctx>) -> Action {
    if err.category().is_transient() {
        Action::requeue(ctx.backoff(&key(&ftj)))
    } else {
        Action::await_change()
    }
}

async fn reconcile(ftj: Arc<FineTuneJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // The main store is ready before the first reconcile; the others may still be listing.
    if !(cache::is_ready(&ctx.datasets) && cache::is_ready(&ctx.jobs) && cache::is_ready(&ctx.pods))
    {
        return Ok(Action::requeue(cache::NOT_READY_RETRY));
    }
    let _timer = ctx.metrics.reconcile(NAME);
    let span = tracing::info_span!("reconcile", controller = NAME, namespace = %ftj.namespace().unwrap_or_default(), resource = %ftj.name_any());
    let result = pipeline(&ftj, &ctx).instrument(span).await;
    match &result {
        Ok(_) => ctx.succeeded(&key(&ftj)),
        Err(e) => {
            tracing::warn!(controller = NAME, namespace = %ftj.namespace().unwrap_or_default(), resource = %ftj.name_any(), category = %e.category(), error = %e.chain(), "reconcile error");
            ctx.metrics.error(NAME, e.category());
            events::publish_error(&ctx, &ftj.object_ref(&()), e).await;
        }
    }
    result
}

async fn pipeline(ftj: &FineTuneJob, ctx: &Ctx) -> Result<Action, Error> {
    let prev = ftj.status.clone().unwrap_or_default();
    let ns = ftj.namespace().unwrap_or_default();
    let cfg = &ctx.config;
    let client = &ctx.client;
    let jobs_api = Api::<Job>::namespaced(client.clone(), &ns);
    let mut existing = prev
        .job_name
        .as_deref()
        .and_then(|n| cache::get(&ctx.jobs, &ns, n))
        .map(|j| (*j).clone());

    // An ended run stays ended; what a later spec change does is decided here.
    match build::after_end(ftj, existing.as_ref()) {
        AfterEnd::Reconcile => {}
        AfterEnd::Done => return Ok(Action::await_change()),
        AfterEnd::Rerun => {
            let old = prev.job_name.as_deref();
            tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = ?old, generation = ?ftj.metadata.generation, "spec changed after the run failed; starting a new run");
            if let Some(old) = old {
                delete_run(ctx, &ns, old).await?;
            }
            write_status(ftj, ctx, build::rerun_status(ftj, old, Timestamp::now())).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        decision => {
            if decision == AfterEnd::ChangeIgnored {
                tracing::warn!(namespace = %ns, resource = %ftj.name_any(), generation = ?ftj.metadata.generation, "spec changed after the job succeeded; not applied");
            }
            if let Some(st) = build::ended_status(ftj, decision, Timestamp::now()) {
                write_status(ftj, ctx, st).await?;
            }
            return Ok(Action::await_change());
        }
    }

    // Dereference (from the caches).
    let ds = cache::get(&ctx.datasets, &ns, &ftj.spec.dataset_ref.name);
    let gate = build::dataset_gate(ftj, ds.as_deref());
    let started = prev.start_time.is_some();

    // Validate. An invalid spec cancels the attempt of the earlier spec, as any other change
    // does, then waits for a corrected one.
    let validated = match &gate {
        DatasetGate::Ready { .. } => match build::validate(ftj, cfg, &gate) {
            Ok(v) => Some(v),
            Err(Error::InvalidSpec(msg)) => {
                ctx.metrics.error(NAME, Category::InvalidSpec);
                let cancelled = if build::cancel_on_invalid(existing.as_ref()) {
                    let old = existing.as_ref().map(|j| j.name_any()).unwrap_or_default();
                    tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %old, "spec changed to an invalid one; cancelling the earlier spec's attempt");
                    delete_run(ctx, &ns, &old).await?;
                    Some(old)
                } else {
                    None
                };
                let st =
                    build::invalid_status(ftj, &gate, &msg, cancelled.as_deref(), Timestamp::now());
                write_status(ftj, ctx, st).await?;
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        },
        _ => {
            ctx.metrics.error(
                NAME,
                if matches!(gate, DatasetGate::Missing(_)) {
                    Category::DatasetNotFound
                } else {
                    Category::DatasetNotReady
                },
            );
            None
        }
    };

    // A spec change mid-run (anything but suspend): the running attempt is cancelled, and the
    // next pass starts a new run for the new generation (its own outputs, no old checkpoint).
    if let Some(job) = &existing
        && build::spec_changed_mid_run(ftj, job, started)
    {
        let old = job.name_any();
        tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %old, generation = ?ftj.metadata.generation, "spec changed mid-run; cancelling the running attempt");
        delete_run(ctx, &ns, &old).await?;
        write_status(ftj, ctx, build::restart_status(ftj, &old, Timestamp::now())).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // Build and apply the Job.
    if let (Some(v), Some(job)) = (&validated, &existing) {
        let hash = job
            .annotations()
            .get(SPEC_HASH)
            .cloned()
            .unwrap_or_default();
        if hash != v.hash && !started && !jobs::job_state(job).complete {
            // Not started yet (e.g. unschedulable): the new spec replaces the Job.
            let old = job.name_any();
            tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %old, "spec changed before the run started; replacing the train Job");
            delete_run(ctx, &ns, &old).await?;
            existing = None;
        }
    }
    let job = match (existing, &validated) {
        (Some(j), _) => Some(j),
        (None, Some(v)) => Some(match cache::get(&ctx.jobs, &ns, &v.job_name) {
            Some(j) => (*j).clone(),
            None => {
                // The config first: the Job's pod mounts it.
                let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
                apply::apply(&cms, &build::config_map(ftj, v)).await?;
                let j = apply::apply(&jobs_api, &build::job(ftj, v, cfg)).await?;
                tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %v.job_name, "created train job");
                j
            }
        }),
        (None, None) => None,
    };
    // suspend is the one mutable field of a running Job.
    if let Some(j) = &job {
        let want = ftj.spec.suspend;
        if jobs::job_state(j).suspended != want && !jobs::job_state(j).complete {
            jobs_api
                .patch(
                    &j.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"suspend": want}})),
                )
                .await
                .map_err(Error::apply(format!("suspend of Job {}", j.name_any())))?;
        }
    }

    // Observe.
    let outputs = build::outputs(ftj, cfg);
    let mut obs = Observed::default();
    let mut status_validated = validated.clone();
    if let Some(j) = &job {
        let mut state = jobs::job_state(j);
        state.suspended = ftj.spec.suspend;
        let job_name = j.name_any();
        if let Some(v) = status_validated.as_mut() {
            v.job_name = job_name.clone();
        }
        let pods = cache::pods_labelled(&ctx.pods, &ns, JOB_LABEL, &job_name);
        obs.pods_seen = pods
            .iter()
            .filter(|p| matches!(jobs::pod_state(p).scheduled, Some((true, ..))))
            .count() as u32;
        let pod = jobs::newest(&pods).map(jobs::pod_state);
        if let Some(p) = &pod
            && p.phase == "Running"
            && let Some(ip) = &p.ip
        {
            obs.progress = poll_progress(ctx, ip).await;
        }
        if let Ok(dir) = artifacts::operator_path(cfg, &outputs.adapter_uri)
            && let Some((step, path)) = artifacts::latest_checkpoint(&dir)
        {
            let rel = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            obs.checkpoint = Some(Checkpoint {
                step,
                uri: Some(format!("{}/checkpoints/{rel}", outputs.adapter_uri)),
            });
        }
        let summaries: Vec<TrainSummary> = pods
            .iter()
            .map(jobs::pod_state)
            .filter_map(|p| {
                p.termination_message
                    .and_then(|m| serde_json::from_str(&m).ok())
            })
            .collect();
        if state.complete {
            let summary = summaries
                .iter()
                .find(|s| s.status == "Succeeded")
                .cloned()
                .or_else(|| read_metrics(cfg, &outputs.adapter_uri));
            let artifact = adapter_artifact(cfg, &outputs.adapter_uri).await?;
            obs.summary = summary;
            obs.job = Some(state.clone());
            let pre = build::status(
                ftj,
                &gate,
                status_validated.as_ref(),
                &obs,
                Timestamp::now(),
            );
            let la = build::adapter(ftj, &outputs, &pre, obs.summary.as_ref(), &artifact);
            record_adapter(ctx, &ns, &la).await?;
            obs.adapter = Some(outputs.adapter_name.clone());
        } else if state.failed.is_some() {
            obs.failure = summaries.iter().rev().find_map(|s| s.message.clone());
            ctx.metrics.error(NAME, Category::JobFailed);
        }
        obs.job = Some(state);
        obs.pod = pod;
    }

    let st = build::status(
        ftj,
        &gate,
        status_validated.as_ref(),
        &obs,
        Timestamp::now(),
    );
    let phase = st.phase;
    write_status(ftj, ctx, st).await?;
    Ok(match phase {
        FineTuneJobPhase::Running => {
            Action::requeue(Duration::from_secs(cfg.progress_interval_seconds))
        }
        // Trainer pods are watched (by label), so scheduling and start trigger a reconcile; a
        // suspended job waits for a change. The requeue is only a safety net.
        FineTuneJobPhase::Queued if ftj.spec.suspend => Action::await_change(),
        FineTuneJobPhase::Queued => Action::requeue(Duration::from_secs(60)),
        FineTuneJobPhase::ValidatingData => Action::requeue(Duration::from_secs(60)),
        _ => Action::await_change(),
    })
}

/// Deletes a train Job (its pods with it) and its config ConfigMap (same name).
async fn delete_run(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    let jobs_api = Api::<Job>::namespaced(ctx.client.clone(), ns);
    match jobs_api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(Error::kube(format!("deleting Job {name}"))(e)),
    }
    let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns);
    match cms.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting ConfigMap {name}"))(e)),
    }
}

async fn poll_progress(ctx: &Context, ip: &str) -> Option<TrainerProgress> {
    let url = format!("http://{ip}:{}/progress", ctx.config.progress_port);
    match ctx.http.get(&url).send().await {
        Ok(r) if r.status().is_success() => r.json::<TrainerProgress>().await.ok(),
        Ok(r) => {
            tracing::debug!(%url, status = %r.status(), "progress not available");
            None
        }
        Err(e) => {
            tracing::debug!(%url, error = %e, "progress not available");
            None
        }
    }
}

fn read_metrics(cfg: &crate::config::OperatorConfig, uri: &str) -> Option<TrainSummary> {
    let dir = artifacts::operator_path(cfg, uri).ok()?;
    serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).ok()?).ok()
}

async fn adapter_artifact(
    cfg: &crate::config::OperatorConfig,
    uri: &str,
) -> Result<AdapterArtifact, Error> {
    let unavailable = |message: String| Error::Artifact {
        uri: uri.to_string(),
        message,
    };
    let dir = artifacts::operator_path(cfg, uri).map_err(unavailable)?;
    let file = dir.join("adapter_model.safetensors");
    let (sha256, size_bytes) = tokio::task::spawn_blocking(move || artifacts::sha256_file(&file))
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(format!("adapter_model.safetensors: {e}")))?;
    Ok(AdapterArtifact { sha256, size_bytes })
}

/// Creates (or re-applies) the LoraAdapter, refusing to take over one from elsewhere.
async fn record_adapter(ctx: &Context, ns: &str, la: &LoraAdapter) -> Result<(), Error> {
    let api = Api::<LoraAdapter>::namespaced(ctx.client.clone(), ns);
    let name = la.name_any();
    if let Some(cur) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("reading LoraAdapter {name}")))?
    {
        if cur.spec.uri != la.spec.uri {
            return Err(Error::NameConflict(format!(
                "LoraAdapter {name:?} already exists for {}; set spec.output.adapterName to another name",
                cur.spec.uri
            )));
        }
        return Ok(());
    }
    apply::apply(&api, la).await?;
    tracing::info!(namespace = %ns, adapter = %name, uri = %la.spec.uri, "recorded adapter");
    Ok(())
}

async fn write_status(
    ftj: &FineTuneJob,
    ctx: &Context,
    st: tailor_api::FineTuneJobStatus,
) -> Result<(), Error> {
    let prev = ftj.status.clone().unwrap_or_default();
    if prev == st {
        return Ok(());
    }
    let api =
        Api::<FineTuneJob>::namespaced(ctx.client.clone(), &ftj.namespace().unwrap_or_default());
    apply::apply_status(&api, &ftj.name_any(), &st).await?;
    if prev.phase != st.phase {
        tracing::info!(namespace = %ftj.namespace().unwrap_or_default(), resource = %ftj.name_any(), from = ?prev.phase, to = ?st.phase, "phase changed");
    }
    events::publish_transitions(
        ctx,
        &ftj.object_ref(&()),
        &prev.conditions,
        &st.conditions,
        &[READY, DEGRADED, DATASET_READY, SCHEDULED],
    )
    .await;
    Ok(())
}
