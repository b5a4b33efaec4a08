//! FineTuneJob controller: a LoRA training run as a `tailor-trainer train` Job.
//!
//! Pipeline: dereference (the Dataset, the current train Job and its pods) → validate (the
//! dataset gate and the spec, into [`build::Validated`]) → build (pure: Job, config, status,
//! LoraAdapter) → apply (server-side apply) → status. While the trainer runs, its `/progress`
//! is polled every `progressIntervalSeconds` into `status.progress`; the final summary comes
//! from the pod's termination message (or `metrics.json`), so a missed poll loses nothing.
//!
//! The Job name is a hash of what it was built from, so a restarted operator finds the Job it
//! created rather than creating another. A spec change before the run started replaces the
//! Job; after that it is reported, not applied (create a new job instead).

pub mod build;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tailor_api::conditions::{DATASET_READY, DEGRADED, READY, SCHEDULED};
use tailor_api::{Checkpoint, Dataset, FineTuneJob, FineTuneJobPhase, LoraAdapter};
use tracing::Instrument;

use crate::apply;
use crate::artifacts;
use crate::context::Context;
use crate::error::{Category, Error, is_not_found};
use crate::events;
use crate::jobs::{self, JOB_LABEL, SPEC_HASH};
use build::{AdapterArtifact, DatasetGate, FTJ_LABEL, Observed, TrainSummary, TrainerProgress};

pub const NAME: &str = "finetunejob";

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<FineTuneJob>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    controller
        .owns(
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels(FTJ_LABEL),
        )
        // A job waiting for its Dataset proceeds the moment the Dataset becomes Ready.
        .watches(
            Api::<Dataset>::all(client.clone()),
            watcher::Config::default(),
            move |ds| {
                let ns = ds.namespace();
                let name = ds.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|f| f.namespace() == ns && f.spec.dataset_ref.name == name)
                    .map(|f| ObjectRef::from_obj(&*f))
                    .collect::<Vec<_>>()
            },
        )
        // Scheduling and start of trainer pods.
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default().labels(FTJ_LABEL),
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

fn error_policy(ftj: Arc<FineTuneJob>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.category().is_transient() {
        Action::requeue(ctx.backoff(&key(&ftj)))
    } else {
        Action::await_change()
    }
}

async fn reconcile(ftj: Arc<FineTuneJob>, ctx: Arc<Context>) -> Result<Action, Error> {
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

async fn pipeline(ftj: &FineTuneJob, ctx: &Context) -> Result<Action, Error> {
    let prev = ftj.status.clone().unwrap_or_default();
    // Final phases stay final; only an invalid spec waits for a corrected one.
    let invalid_spec = tailor_api::conditions::get(&prev.conditions, READY)
        .is_some_and(|c| c.reason == Category::InvalidSpec.as_str());
    if prev.phase == FineTuneJobPhase::Succeeded
        || (prev.phase == FineTuneJobPhase::Failed && !invalid_spec)
    {
        return Ok(Action::await_change());
    }
    let ns = ftj.namespace().unwrap_or_default();
    let cfg = &ctx.config;
    let client = &ctx.client;
    let jobs_api = Api::<Job>::namespaced(client.clone(), &ns);

    // Dereference.
    let ds = Api::<Dataset>::namespaced(client.clone(), &ns)
        .get_opt(&ftj.spec.dataset_ref.name)
        .await
        .map_err(Error::kube(format!(
            "reading Dataset {}",
            ftj.spec.dataset_ref.name
        )))?;
    let gate = build::dataset_gate(ftj, ds.as_ref());
    let mut existing = match &prev.job_name {
        Some(n) => jobs_api
            .get_opt(n)
            .await
            .map_err(Error::kube(format!("reading Job {n}")))?,
        None => None,
    };
    let started = prev.start_time.is_some();

    // Validate, build and apply the Job.
    let validated = match &gate {
        DatasetGate::Ready { .. } => match build::validate(ftj, cfg, &gate) {
            Ok(v) => Some(v),
            Err(Error::InvalidSpec(msg)) => {
                ctx.metrics.error(NAME, Category::InvalidSpec);
                return invalid(ftj, ctx, &gate, msg).await;
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
            match jobs_api.delete(&old, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::kube(format!("deleting Job {old}"))(e)),
            }
            existing = None;
        }
    }
    let job = match (existing, &validated) {
        (Some(j), _) => Some(j),
        (None, Some(v)) => Some(
            match jobs_api
                .get_opt(&v.job_name)
                .await
                .map_err(Error::kube(format!("reading Job {}", v.job_name)))?
            {
                Some(j) => j,
                None => {
                    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
                    apply::apply(&cms, &build::config_map(ftj, v)).await?;
                    let j = apply::apply(&jobs_api, &build::job(ftj, v, cfg)).await?;
                    tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %v.job_name, "created train job");
                    j
                }
            },
        ),
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
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&format!("{JOB_LABEL}={job_name}")))
            .await
            .map_err(Error::kube("listing trainer pods"))?;
        obs.pods_seen = pods
            .items
            .iter()
            .filter(|p| matches!(jobs::pod_state(p).scheduled, Some((true, ..))))
            .count() as u32;
        let pod = jobs::newest(&pods.items).map(jobs::pod_state);
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
            .items
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
        // The pod's move from Pending to Running changes no watched object (pods are owned by
        // the Job, not by us), so look again as often as progress is polled.
        FineTuneJobPhase::Queued => {
            Action::requeue(Duration::from_secs(cfg.progress_interval_seconds))
        }
        FineTuneJobPhase::ValidatingData => Action::requeue(Duration::from_secs(60)),
        _ => Action::await_change(),
    })
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

async fn invalid(
    ftj: &FineTuneJob,
    ctx: &Context,
    gate: &DatasetGate,
    msg: String,
) -> Result<Action, Error> {
    let mut st = build::status(ftj, gate, None, &Observed::default(), Timestamp::now());
    let now = Timestamp::now();
    let g = ftj.metadata.generation;
    st.phase = FineTuneJobPhase::Failed;
    for (t, s) in [
        (READY, false),
        (tailor_api::conditions::PROGRESSING, false),
        (DEGRADED, true),
    ] {
        tailor_api::conditions::set(
            &mut st.conditions,
            tailor_api::conditions::new(t, Some(s), Category::InvalidSpec.as_str(), &msg, g),
            now,
        );
    }
    write_status(ftj, ctx, st).await?;
    Ok(Action::await_change())
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
