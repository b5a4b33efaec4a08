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
mod rendezvous;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tailor_api::{
    Checkpoint, Dataset, FineTuneJob, FineTuneJobPhase, LoraAdapter, ModelDeployment,
};

use crate::apply;
use crate::artifacts;
use crate::cache;
use crate::context::Context;
use crate::controller;
use crate::error::{Category, Error, is_not_found};
use crate::inputs;
use crate::jobs::{self, JOB_LABEL, SPEC_HASH};
use crate::stored::Stored;
use build::{
    AdapterArtifact, AfterEnd, DatasetGate, EvaluationState, FTJ_LABEL, Observed, Outcome,
    TrainSummary, TrainerProgress,
};

pub const NAME: &str = "finetunejob";

/// The FineTuneJob controller: the shared [`Context`] and the caches of what its reconciles
/// read (filled by the controller's own watches, see [`crate::cache`]).
pub struct Ctx {
    pub base: Arc<Context>,
    datasets: Store<DeserializeGuard<Dataset>>,
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
    type K = FineTuneJob;
    const NAME: &'static str = NAME;
    fn context(&self) -> &Context {
        &self.base
    }
    fn caches_ready(&self) -> bool {
        cache::is_ready(&self.datasets)
            && cache::is_ready(&self.jobs)
            && cache::is_ready(&self.pods)
    }
    async fn reconcile(&self, ftj: &FineTuneJob) -> Result<Action, Error> {
        pipeline(ftj, self).await
    }
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (datasets, ds_writer) = reflector::store::<DeserializeGuard<Dataset>>();
    let (jobs, jobs_writer) = reflector::store::<Job>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (c, ftjs) = controller::new::<FineTuneJob>(client.clone());
    let c = c
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
                Api::<DeserializeGuard<Dataset>>::all(client.clone()),
                watcher::Config::default(),
                // The gate reads status and generation; inline data can be large.
                |g: &mut DeserializeGuard<Dataset>| {
                    if let Ok(ds) = g.0.as_mut() {
                        ds.spec.source.inline = None;
                    }
                },
            ),
            move |ds| {
                let ns = ds.namespace();
                let name = ds.name_any();
                ftjs.state()
                    .iter()
                    .filter_map(|f| controller::valid(f))
                    .filter(|f| f.namespace() == ns && f.spec.dataset_ref.name == name)
                    .map(|f| {
                        ObjectRef::new(&f.name_any()).within(&f.namespace().unwrap_or_default())
                    })
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
                    .map(|n| ObjectRef::new(n).within(&ns))
            },
        );
    controller::run(
        c,
        Arc::new(Ctx {
            base: ctx,
            datasets,
            jobs,
            pods,
        }),
    )
    .await;
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
    let gate = match ds.as_deref().map(|g| &g.0) {
        Some(Err(bad)) => DatasetGate::NotReady(format!(
            "Dataset {:?} could not be read: {}",
            ftj.spec.dataset_ref.name, bad.error
        )),
        found => build::dataset_gate(ftj, found.and_then(|r| r.as_ref().ok())),
    };
    let started = prev.start_time.is_some();
    // Read until the run starts: a running Job's spec was checked when it was created, and a
    // spec change mid-run cancels the run first.
    let base_config = if started {
        None
    } else {
        read_base_config(cfg, &ns, &ftj.spec.base_model.uri).await
    };

    // Validate. An invalid spec cancels the attempt of the earlier spec, as any other change
    // does, then waits for a corrected one.
    let validated = match &gate {
        DatasetGate::Ready { .. } => match build::validate(ftj, cfg, &gate).and_then(|v| {
            build::check_family(ftj, base_config.as_deref())?;
            Ok(v)
        }) {
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
                let base = inputs::pinned(ctx, &ns, "spec.baseModel", &ftj.spec.base_model).await?;
                let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
                apply::apply(&cms, &build::config_map(ftj, v)).await?;
                // A group's pods find rank 0 under its Service from their first moment.
                rendezvous::apply(ctx, ftj, v, &ns).await?;
                let attempt = build::group::next_attempt(ftj, Timestamp::now());
                let j = apply::apply(&jobs_api, &build::attempt_job(ftj, v, cfg, &base, attempt))
                    .await?;
                tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %v.job_name, attempt = attempt.number, "created train job");
                j
            }
        }),
        (None, None) => None,
    };
    // suspend is the one mutable field of a running Job.
    if let Some(j) = &job {
        let queued = jobs::kueue_queue(&ftj.metadata).is_some();
        if let Some(want) = jobs::suspend_patch(ftj.spec.suspend, queued, &jobs::job_state(j)) {
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
        // The user's suspend wins the display; a queued Job waits for Kueue otherwise.
        if ftj.spec.suspend {
            state.suspended = true;
            state.awaiting_admission = None;
        } else if state.awaiting_admission.is_none() {
            state.suspended = false;
        }
        let job_name = j.name_any();
        obs.base_model_revision = jobs::fetched(j)
            .iter()
            .find_map(|uri| inputs::revision_of(uri));
        if let Some(v) = status_validated.as_mut() {
            v.job_name = job_name.clone();
        }
        // Only the Job's own pods: a pod that merely carries its labels is not believed.
        let job_uid = j.metadata.uid.clone().unwrap_or_default();
        let pods: Vec<_> = cache::pods_labelled(&ctx.pods, &ns, JOB_LABEL, &job_name)
            .into_iter()
            .filter(|p| jobs::controlled_by(p, &job_uid))
            .collect();
        obs.pods_seen = pods
            .iter()
            .filter(|p| matches!(jobs::pod_state(p).scheduled, Some((true, ..))))
            .count() as u32;
        // A group's status is rank 0's, unless one of its pods still waits to be scheduled.
        let pod = build::group::shown_pod(&pods);
        obs.group_attempt = build::group::attempt_of(j);
        if let Some(p) = &pod
            && p.phase == "Running"
            && let Some(ip) = &p.ip
        {
            obs.progress = poll_progress(ctx, ip).await;
        }
        // The run's output, opened once for this pass (its checkpoints, metrics, weights).
        let output = Stored::open(&ctx.base, &ns, &outputs.adapter_uri).await;
        if let Ok(o) = &output
            && let Some((step, rel)) = o.latest_checkpoint().await
        {
            obs.checkpoint = Some(Checkpoint {
                step,
                uri: Some(format!("{}/checkpoints/{rel}", outputs.adapter_uri)),
            });
        }
        let summaries: Vec<(bool, TrainSummary)> = pods
            .iter()
            .filter_map(|p| {
                let m = jobs::pod_state(p).termination_message?;
                Some((build::group::reports(p), serde_json::from_str(&m).ok()?))
            })
            .collect();
        let being_deleted = j.metadata.deletion_timestamp.is_some();
        if obs.group_attempt.is_some() && being_deleted && !state.complete {
            // A failed group's Job on its way out: the next attempt waits for its pods to go.
            obs.restarting = Some(build::group::waiting_for_group(j));
        } else if state.complete {
            // Rank 0 reports the run (the other ranks of a group have nothing to say).
            let summary = summaries
                .iter()
                .find(|(rank0, s)| *rank0 && s.status == Outcome::Succeeded)
                .map(|(_, s)| s.clone());
            let output = output.map_err(|message| Error::Artifact {
                uri: outputs.adapter_uri.clone(),
                message,
            })?;
            let summary = match summary {
                Some(s) => Some(s),
                None => read_metrics(&output).await,
            };
            let artifact = adapter_artifact(&output, &outputs.adapter_uri, cfg).await?;
            obs.summary = summary;
            obs.job = Some(state.clone());
            let la = build::adapter(ftj, &outputs, &artifact, cfg);
            record_adapter(ctx, &ns, &la).await?;
            obs.adapter = Some(outputs.adapter_name.clone());
            obs.evaluation = match (&ftj.spec.evaluation, &prev.evaluation) {
                (None, _) => EvaluationState::NotWanted,
                (Some(_), Some(done)) => EvaluationState::Done(Box::new(done.clone())),
                (Some(_), None) => match &status_validated {
                    Some(v) => {
                        let base = inputs::at_revision(
                            &ftj.spec.base_model.uri,
                            obs.base_model_revision.as_deref(),
                        );
                        evaluation(ctx, ftj, &ns, v, &base, &outputs.adapter_uri).await?
                    }
                    None => EvaluationState::Waiting(format!(
                        "the adapter is recorded; the evaluation waits for Dataset {:?} to be Ready (its test split)",
                        ftj.spec.dataset_ref.name
                    )),
                },
            };
        } else if state.failed.is_some() {
            let fetch = jobs::fetch_failure(&pods).map(|f| format!("fetching the base model: {f}"));
            obs.failure =
                fetch.or_else(|| summaries.iter().rev().find_map(|(_, s)| s.message.clone()));
            ctx.metrics.error(NAME, Category::JobFailed);
            if let Some(why) = build::group::restart(ftj, j, &state, obs.failure.as_deref()) {
                tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %job_name, attempt = ?obs.group_attempt, "a rank of the group failed; restarting the group");
                rendezvous::restart_group(ctx, &ns, &job_name).await?;
                obs.restarting = Some(why);
            }
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
        // The evaluate Job and its pods are watched; a judge that has no endpoint yet is not.
        FineTuneJobPhase::Evaluating => Action::requeue(Duration::from_secs(10)),
        FineTuneJobPhase::ValidatingData => Action::requeue(Duration::from_secs(60)),
        _ => Action::await_change(),
    })
}

/// Deletes a train Job and the run's evaluate Job (their pods with them) and their config
/// ConfigMaps (same names), and a group's Service and NetworkPolicy.
async fn delete_run(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    delete_job(ctx, ns, &build::evaluate_job_name(name)).await?;
    delete_job(ctx, ns, name).await?;
    rendezvous::delete(ctx, ns, name).await;
    Ok(())
}

async fn delete_job(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
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

/// The evaluate step of a trained run: its Job created once the judge can be reached, then
/// observed until it reports (termination message, else `evaluation/evaluation.json` next to
/// the adapter) or fails.
async fn evaluation(
    ctx: &Ctx,
    ftj: &FineTuneJob,
    ns: &str,
    v: &build::Validated,
    base_uri: &str,
    adapter_uri: &str,
) -> Result<EvaluationState, Error> {
    let name = build::evaluate_job_name(&v.job_name);
    let Some(job) = cache::get(&ctx.jobs, ns, &name) else {
        let judge_url = match judge_url(ctx, ftj, ns).await? {
            Ok(url) => url,
            Err(wait) => return Ok(EvaluationState::Waiting(wait)),
        };
        let Some(config) = build::evaluate_config(ftj, v, judge_url.as_deref()) else {
            return Ok(EvaluationState::NotWanted);
        };
        let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns);
        apply::apply(
            &cms,
            &build::evaluate_config_map(ftj, &name, &v.hash, &config),
        )
        .await?;
        let jobs_api = Api::<Job>::namespaced(ctx.client.clone(), ns);
        apply::apply(
            &jobs_api,
            &build::evaluate_job(ftj, &name, v, &ctx.config, base_uri),
        )
        .await?;
        tracing::info!(namespace = %ns, resource = %ftj.name_any(), job = %name, "created evaluate job");
        return Ok(EvaluationState::Running(name));
    };
    let state = jobs::job_state(&job);
    let job_uid = job.metadata.uid.clone().unwrap_or_default();
    let messages: Vec<String> = cache::pods_labelled(&ctx.pods, ns, JOB_LABEL, &name)
        .into_iter()
        .filter(|p| jobs::controlled_by(p, &job_uid))
        .filter_map(|p| jobs::pod_state(&p).termination_message)
        .collect();
    if state.complete {
        let mut report = messages
            .iter()
            .find_map(|m| serde_json::from_str::<build::EvaluationReport>(m).ok());
        if report.is_none()
            && let Ok(output) = Stored::open(&ctx.base, ns, adapter_uri).await
        {
            report = output
                .read("evaluation/evaluation.json", crate::endpoints::SMALL_BODY)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        }
        return Ok(match report {
            Some(r) => EvaluationState::Done(Box::new(r)),
            None => {
                EvaluationState::Failed(format!("Job {name} completed without a readable report"))
            }
        });
    }
    if let Some((reason, message)) = state.failed {
        let why = messages
            .iter()
            .rev()
            .find_map(|m| serde_json::from_str::<TrainSummary>(m).ok()?.message)
            .unwrap_or(message);
        ctx.metrics.error(NAME, Category::JobFailed);
        return Ok(EvaluationState::Failed(format!(
            "Job {name}: {reason}: {why}"
        )));
    }
    Ok(EvaluationState::Running(name))
}

/// The judge's base URL: `spec.evaluation.judge.endpoint`, or the endpoint of the
/// ModelDeployment it names (`Err` with why the evaluation waits while it has none). `None`
/// without a judge.
async fn judge_url(
    ctx: &Ctx,
    ftj: &FineTuneJob,
    ns: &str,
) -> Result<Result<Option<String>, String>, Error> {
    let Some(judge) = ftj.spec.evaluation.as_ref().and_then(|e| e.judge.as_ref()) else {
        return Ok(Ok(None));
    };
    if let Some(url) = &judge.endpoint {
        return Ok(Ok(Some(url.clone())));
    }
    let Some(md) = &judge.model_deployment_ref else {
        return Ok(Ok(None));
    };
    let api = Api::<ModelDeployment>::namespaced(ctx.client.clone(), ns);
    let found = api
        .get_opt(&md.name)
        .await
        .map_err(Error::kube(format!("reading ModelDeployment {}", md.name)))?;
    Ok(
        match found.and_then(|m| m.status.and_then(|s| s.endpoint)) {
            Some(url) => Ok(Some(url)),
            None => Err(format!(
                "the adapter is recorded; the evaluation waits for the judge, ModelDeployment {:?}, to have an endpoint",
                md.name
            )),
        },
    )
}

async fn poll_progress(ctx: &Context, ip: &str) -> Option<TrainerProgress> {
    let url = format!("http://{ip}:{}/progress", ctx.config.progress_port);
    match crate::endpoints::get_json(&ctx.http, &url, None, crate::endpoints::SMALL_BODY).await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(%url, error = %e, "progress not available");
            None
        }
    }
}

async fn read_metrics(output: &Stored) -> Option<TrainSummary> {
    let bytes = output
        .read("metrics.json", crate::endpoints::SMALL_BODY)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn adapter_artifact(
    output: &Stored,
    uri: &str,
    cfg: &crate::config::OperatorConfig,
) -> Result<AdapterArtifact, Error> {
    let (sha256, size_bytes) = output
        .sha256("adapter_model.safetensors", cfg.max_adapter_bytes)
        .await
        .map_err(|message| Error::Artifact {
            uri: uri.to_string(),
            message,
        })?;
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
    let prev_phase = ftj.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if controller::write_status(ctx, ftj, &st).await? && prev_phase != st.phase {
        tracing::info!(namespace = %ftj.namespace().unwrap_or_default(), resource = %ftj.name_any(), from = ?prev_phase, to = ?st.phase, "phase changed");
    }
    Ok(())
}

/// The base model's `config.json`, where the operator can read it (bounded; `None` otherwise).
async fn read_base_config(
    cfg: &crate::config::OperatorConfig,
    ns: &str,
    uri: &str,
) -> Option<Vec<u8>> {
    let dir = artifacts::operator_path(cfg, ns, uri).ok()?;
    tokio::task::spawn_blocking(move || {
        artifacts::read_bounded(&dir.join("config.json"), crate::endpoints::SMALL_BODY).ok()
    })
    .await
    .ok()
    .flatten()
}
