//! LoraAdapter controller: verifies adapter artifacts (ones its FineTuneJobs produced and ones
//! imported by hand) and honours `deletionPolicy` with a finalizer.
//!
//! Pipeline: dereference (read the artifact: `adapter_model.safetensors` digest and size,
//! `adapter_config.json`) → validate/build (pure: [`build::verify`], [`build::status`]) → status.
//! A Ready adapter is immutable: it is verified once per generation. The lineage a FineTuneJob
//! recorded in the `tailor.dev/lineage` annotation is copied into status, so it survives the job.

pub mod build;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tailor_api::conditions::{DEGRADED, READY};
use tailor_api::{DeletionPolicy, Lineage, LoraAdapter, LoraAdapterPhase};
use tracing::Instrument;

use crate::apply;
use crate::artifacts;
use crate::context::Context;
use crate::error::{Category, Error};
use crate::events;
use crate::finetune::build::LINEAGE_ANNOTATION;
use build::{Found, Outcome};

pub const NAME: &str = "loraadapter";
/// Held while `deletionPolicy: Delete` has files to remove.
pub const FINALIZER: &str = "tailor.dev/adapter-artifact";

pub async fn run(ctx: Arc<Context>) {
    Controller::new(
        Api::<LoraAdapter>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
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

fn key(la: &LoraAdapter) -> String {
    format!(
        "{NAME}/{}/{}",
        la.namespace().unwrap_or_default(),
        la.name_any()
    )
}

fn error_policy(la: Arc<LoraAdapter>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.category().is_transient() {
        Action::requeue(ctx.backoff(&key(&la)))
    } else {
        Action::await_change()
    }
}

async fn reconcile(la: Arc<LoraAdapter>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(NAME);
    let span = tracing::info_span!("reconcile", controller = NAME, namespace = %la.namespace().unwrap_or_default(), resource = %la.name_any());
    let result = pipeline(&la, &ctx).instrument(span).await;
    match &result {
        Ok(_) => ctx.succeeded(&key(&la)),
        Err(e) => {
            tracing::warn!(controller = NAME, namespace = %la.namespace().unwrap_or_default(), resource = %la.name_any(), category = %e.category(), error = %e.chain(), "reconcile error");
            ctx.metrics.error(NAME, e.category());
            events::publish_error(&ctx, &la.object_ref(&()), e).await;
        }
    }
    result
}

async fn set_finalizers(
    api: &Api<LoraAdapter>,
    la: &LoraAdapter,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": la.resource_version()}});
    api.patch(
        &la.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(Error::apply(format!(
        "finalizers of LoraAdapter {}",
        la.name_any()
    )))
}

async fn pipeline(la: &LoraAdapter, ctx: &Context) -> Result<Action, Error> {
    let ns = la.namespace().unwrap_or_default();
    let api = Api::<LoraAdapter>::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = la.finalizers().iter().any(|f| f == FINALIZER);
    if la.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            if la.spec.deletion_policy == DeletionPolicy::Delete {
                delete_artifact(ctx, &la.spec.uri).await?;
            }
            let rest = la
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            set_finalizers(&api, la, rest).await?;
        }
        return Ok(Action::await_change());
    }
    let wants_finalizer = la.spec.deletion_policy == DeletionPolicy::Delete;
    if wants_finalizer != has_finalizer {
        let mut f: Vec<String> = la
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if wants_finalizer {
            f.push(FINALIZER.to_string());
        }
        // The patch triggers another reconcile, which verifies.
        return set_finalizers(&api, la, f)
            .await
            .map(|_| Action::await_change());
    }
    let prev = la.status.clone().unwrap_or_default();
    let lineage: Option<Lineage> = la
        .annotations()
        .get(LINEAGE_ANNOTATION)
        .and_then(|s| serde_json::from_str(s).ok());
    // The artifact is immutable once Ready: verified once per generation.
    if prev.phase == LoraAdapterPhase::Ready
        && prev.observed_generation == la.metadata.generation
        && (lineage.is_none() || prev.lineage == lineage)
    {
        return Ok(Action::await_change());
    }
    let outcome = match read_artifact(ctx, &la.spec.uri).await {
        Err(message) => Outcome::Unavailable(message),
        Ok(found) => match build::verify(la, &found) {
            Ok(message) => Outcome::Verified { found, message },
            Err(message) => Outcome::Mismatch {
                found: Some(found),
                message,
            },
        },
    };
    let st = build::status(la, &outcome, lineage, Timestamp::now());
    if st != prev {
        apply::apply_status(&api, &la.name_any(), &st).await?;
        events::publish_transitions(
            ctx,
            &la.object_ref(&()),
            &prev.conditions,
            &st.conditions,
            &[READY, DEGRADED],
        )
        .await;
    }
    Ok(match outcome {
        Outcome::Verified { .. } => Action::await_change(),
        Outcome::Mismatch { .. } => {
            ctx.metrics.error(NAME, Category::VerificationFailed);
            Action::await_change()
        }
        Outcome::Unavailable(_) => {
            ctx.metrics.error(NAME, Category::ArtifactUnavailable);
            Action::requeue(ctx.backoff(&key(la)).max(Duration::from_secs(5)))
        }
    })
}

async fn read_artifact(ctx: &Context, uri: &str) -> Result<Found, String> {
    let dir: PathBuf = artifacts::operator_path(&ctx.config, uri)?;
    tokio::task::spawn_blocking(move || {
        let weights = dir.join("adapter_model.safetensors");
        let (sha256, size_bytes) =
            artifacts::sha256_file(&weights).map_err(|e| format!("{}: {e}", weights.display()))?;
        let cfg_path = dir.join("adapter_config.json");
        let bytes = std::fs::read(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let adapter_config = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: invalid JSON: {e}", cfg_path.display()))?;
        Ok(Found {
            sha256,
            size_bytes,
            adapter_config,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn delete_artifact(ctx: &Context, uri: &str) -> Result<(), Error> {
    let dir = match artifacts::operator_path(&ctx.config, uri) {
        Ok(d) => d,
        Err(message) => {
            // Nothing the operator can reach: keep the object from hanging forever.
            tracing::warn!(%uri, %message, "cannot delete adapter artifact");
            return Ok(());
        }
    };
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {
            tracing::info!(%uri, "deleted adapter artifact");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Artifact {
            uri: uri.to_string(),
            message: format!("deleting: {e}"),
        }),
    }
}
