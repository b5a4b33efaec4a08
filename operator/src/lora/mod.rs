//! LoraAdapter controller: verifies adapter artifacts (ones its FineTuneJobs produced and ones
//! imported by hand) and honours `deletionPolicy` with a finalizer.
//!
//! Pipeline: observe (the FineTuneJob that produced it, from the cache) → read the artifact
//! (`adapter_model.safetensors` digest and size, `adapter_config.json`; bounded, inside the
//! namespace's area) → validate/build (pure: [`build::verify`], [`build::status`]) → status.
//! A Ready adapter is immutable: it is verified once per generation.
//!
//! Lineage and ownership come only from what the operator observed: the status of the
//! FineTuneJob that recorded this adapter as its output ([`crate::finetune::build::lineage`]).
//! That job's status is written by the operator alone; an annotation or a spec field a user
//! could edit is never believed. Once seen, both are kept in the adapter's status, so they
//! survive the job. `deletionPolicy: Delete` removes files only where `status.producedBy` says
//! the operator created them, inside the namespace's own area; an imported adapter's files are
//! never deleted, whatever its URI says.

pub mod build;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tailor_api::{DeletionPolicy, FineTuneJob, LoraAdapter, LoraAdapterPhase};

use crate::artifacts;
use crate::cache;
use crate::context::Context;
use crate::controller::{self, valid};
use crate::endpoints::SMALL_BODY;
use crate::error::{Category, Error};
use crate::events;
use build::{Found, Outcome};

pub const NAME: &str = "loraadapter";
/// Held while `deletionPolicy: Delete` may have files to remove.
pub const FINALIZER: &str = "tailor.dev/adapter-artifact";

/// The LoraAdapter controller: the shared [`Context`] and the FineTuneJobs (where lineage and
/// ownership come from).
pub struct Ctx {
    pub base: Arc<Context>,
    jobs: Store<DeserializeGuard<FineTuneJob>>,
}

impl controller::Reconciler for Ctx {
    type K = LoraAdapter;
    const NAME: &'static str = NAME;
    fn context(&self) -> &Context {
        &self.base
    }
    fn caches_ready(&self) -> bool {
        cache::is_ready(&self.jobs)
    }
    async fn reconcile(&self, la: &LoraAdapter) -> Result<Action, Error> {
        let ctx = &self.base;
        let wants = la.spec.deletion_policy == DeletionPolicy::Delete;
        let has = la.finalizers().iter().any(|f| f == FINALIZER);
        if !wants && !has {
            return verify(la, self).await;
        }
        let api =
            Api::<LoraAdapter>::namespaced(ctx.client.clone(), &la.namespace().unwrap_or_default());
        finalizer(&api, FINALIZER, Arc::new(la.clone()), |event| async move {
            match event {
                finalizer::Event::Apply(la) => verify(&la, self).await,
                finalizer::Event::Cleanup(la) => cleanup(&la, self).await,
            }
        })
        .await
        .map_err(|e| match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            finalizer::Error::AddFinalizer(k) | finalizer::Error::RemoveFinalizer(k) => {
                Error::apply(format!("finalizer of LoraAdapter {}", la.name_any()))(k)
            }
            other => Error::InvalidSpec(other.to_string()),
        })
    }
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (jobs, jobs_writer) = reflector::store::<DeserializeGuard<FineTuneJob>>();
    let (c, _) = controller::new::<LoraAdapter>(client.clone());
    // A FineTuneJob recording its adapter (status.adapterRef) is what gives the adapter its
    // lineage: look again then.
    let c = c.watches_stream(
        cache::reflect(
            jobs_writer,
            Api::<DeserializeGuard<FineTuneJob>>::all(client),
            watcher::Config::default(),
            |_| {},
        ),
        |g| {
            let ftj = valid(&g)?;
            let name = ftj.status.as_ref()?.adapter_ref.as_ref()?.name.clone();
            Some(ObjectRef::new(&name).within(&ftj.namespace().unwrap_or_default()))
        },
    );
    controller::run(c, Arc::new(Ctx { base: ctx, jobs })).await;
}

async fn verify(la: &LoraAdapter, r: &Ctx) -> Result<Action, Error> {
    let ctx = &r.base;
    let ns = la.namespace().unwrap_or_default();
    let prev = la.status.clone().unwrap_or_default();
    let source = la
        .spec
        .source_job
        .as_deref()
        .and_then(|j| cache::get(&r.jobs, &ns, j));
    let lineage = source
        .as_deref()
        .and_then(valid)
        .and_then(|ftj| crate::finetune::build::lineage(ftj, &ctx.config, la));
    // The artifact is immutable once Ready: verified once per generation, and again only when
    // its producing job's record newly appears.
    if prev.phase == LoraAdapterPhase::Ready
        && prev.observed_generation == la.metadata.generation
        && (lineage.is_none() || prev.produced_by.is_some())
    {
        return Ok(Action::await_change());
    }
    let outcome = match read_artifact(ctx, &ns, la).await {
        Err(message) => Outcome::Unavailable(message),
        Ok(found) => match build::verify(la, &found) {
            Ok(message) => Outcome::Verified { found, message },
            Err(message) => Outcome::Mismatch {
                found: Some(found),
                message,
            },
        },
    };
    let produced_by = lineage.as_ref().and(la.spec.source_job.clone());
    let st = build::status(la, &outcome, lineage, produced_by, Timestamp::now());
    controller::write_status(ctx, la, &st).await?;
    Ok(match outcome {
        Outcome::Verified { .. } => Action::await_change(),
        Outcome::Mismatch { .. } => {
            ctx.metrics.error(NAME, Category::VerificationFailed);
            Action::await_change()
        }
        Outcome::Unavailable(_) => {
            ctx.metrics.error(NAME, Category::ArtifactUnavailable);
            Action::requeue(
                ctx.backoff(&format!("{NAME}/{ns}/{}", la.name_any()))
                    .max(Duration::from_secs(5)),
            )
        }
    })
}

/// How long one verification of an adapter in a store may take.
const REMOTE_VERIFY_TIMEOUT: Duration = Duration::from_secs(120);

async fn read_artifact(ctx: &Context, ns: &str, la: &LoraAdapter) -> Result<Found, String> {
    let uri = &la.spec.uri;
    match tailor_artifacts::ArtifactUri::parse(uri) {
        Ok(u) if !u.is_local() => return read_remote(ctx, ns, la, u).await,
        _ => {}
    }
    let dir = artifacts::operator_path(&ctx.config, ns, uri)?;
    tokio::task::spawn_blocking(move || {
        let weights = dir.join("adapter_model.safetensors");
        let (sha256, size_bytes) = artifacts::sha256_file(&weights)
            .map_err(|e| format!("{}: {e}", weights.path.display()))?;
        let cfg_path = dir.join("adapter_config.json");
        let bytes = artifacts::read_bounded(&cfg_path, SMALL_BODY)
            .map_err(|e| format!("{}: {e}", cfg_path.path.display()))?;
        let adapter_config = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: invalid JSON: {e}", cfg_path.path.display()))?;
        Ok(Found {
            sha256,
            size_bytes,
            adapter_config,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// An adapter in a bucket or on the Hub, read where it is stored (the weights streamed through
/// sha256, no local copy) with the credentials the LoraAdapter names.
async fn read_remote(
    ctx: &Context,
    ns: &str,
    la: &LoraAdapter,
    uri: tailor_artifacts::ArtifactUri,
) -> Result<Found, String> {
    let env = crate::inputs::credentials(
        ctx,
        ns,
        "spec.credentialsSecretRef",
        la.spec.credentials_secret_ref.as_ref(),
    )
    .await
    .map_err(|e| e.to_string())?;
    crate::inputs::endpoints_allowed(&ctx.config, &env).map_err(|e| format!("{uri}: {e}"))?;
    let store = tailor_artifacts::Context::new(env);
    let a = tokio::time::timeout(
        REMOTE_VERIFY_TIMEOUT,
        tailor_artifacts::adapter::inspect(&uri, &store, ctx.config.max_adapter_bytes),
    )
    .await
    .map_err(|_| {
        format!(
            "{uri}: reading the adapter took longer than {}s",
            REMOTE_VERIFY_TIMEOUT.as_secs()
        )
    })?
    .map_err(|e| e.to_string())?;
    Ok(Found {
        sha256: a.sha256,
        size_bytes: a.size_bytes,
        adapter_config: a.adapter_config,
    })
}

/// Deletion with `deletionPolicy: Delete`: removes the artifact only if the operator created it
/// (`status.producedBy`), and only inside the namespace's own area.
async fn cleanup(la: &LoraAdapter, r: &Ctx) -> Result<Action, Error> {
    let ctx = &r.base;
    let ns = la.namespace().unwrap_or_default();
    let uri = &la.spec.uri;
    let produced_by = la.status.as_ref().and_then(|s| s.produced_by.clone());
    let in_area = matches!(
        artifacts::resolve(&ctx.config, uri),
        Ok(artifacts::Resolved::Area { .. })
    );
    let keep = |why: String| {
        tracing::info!(namespace = %ns, resource = %la.name_any(), %uri, reason = %why, "not deleting adapter artifact");
        events::publish(
            ctx,
            &la.object_ref(&()),
            kube::runtime::events::EventType::Normal,
            "ArtifactRetained",
            &format!("{uri} was not deleted: {why}"),
            "Delete",
        );
        Ok(Action::await_change())
    };
    if la.spec.deletion_policy != DeletionPolicy::Delete {
        return keep("deletionPolicy is Retain".into());
    }
    let Some(job) = produced_by else {
        return keep(
            "the operator did not create these files (an imported adapter, or one never verified as a FineTuneJob's output)"
                .into(),
        );
    };
    if !in_area {
        return keep("it is outside the namespace's own artifact area".into());
    }
    let dir = match artifacts::operator_path(&ctx.config, &ns, uri) {
        Ok(d) => d,
        Err(message) => return keep(message),
    };
    // Symlinks followed first: a planted link must not lead the deletion into another area.
    let real = match artifacts::contained(&dir) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Action::await_change()),
        Err(e) => return keep(e.to_string()),
    };
    match tokio::fs::remove_dir_all(&real).await {
        Ok(()) => {
            tracing::info!(namespace = %ns, resource = %la.name_any(), %uri, job = %job, "deleted adapter artifact");
            Ok(Action::await_change())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Action::await_change()),
        Err(e) => Err(Error::Artifact {
            uri: uri.to_string(),
            message: format!("deleting: {e}"),
        }),
    }
}
