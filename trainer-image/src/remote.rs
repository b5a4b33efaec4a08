//! Training inputs and outputs given as artifact URIs (`s3://`, `gs://`, `hf://`, …), handled
//! at the edges of a run so the training code sees only local paths:
//!
//! - before loading, every input that is a URI (base model, training and validation data,
//!   initial adapter) is fetched into the work directory (through the node-local cache when
//!   one is given) and the setting is replaced by the local path;
//! - an output that is a URI is trained into `<work>/output`, after pulling the newest complete
//!   checkpoint from `<output>/checkpoints/` — so an attempt on another node, with an empty
//!   disk, resumes where the last one stopped;
//! - each checkpoint is uploaded as soon as it is written (`state.json` last: a checkpoint
//!   without it is incomplete and ignored), older ones are pruned from the store as locally;
//! - at the end the adapter and `metrics.json` are uploaded.
//!
//! Credentials come from the process environment's standard variables (`AWS_*`, `HF_TOKEN`,
//! …), which the operator fills from the Secret named in the spec.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tailor_artifacts::fetch::short_hash;
use tailor_artifacts::store::local_files;
use tailor_artifacts::{ArtifactUri, Context, Env, Fetcher, Store};

use crate::train::TrainConfig;
use tailor_wire::train::{checkpoint_dir, checkpoint_step, complete_checkpoints};

/// Complete checkpoints kept in the store (as `run_state` keeps locally).
const KEEP: usize = 2;

/// Whether a setting names a URI rather than a local path.
pub fn is_uri(p: &Path) -> bool {
    p.to_str().is_some_and(|s| s.contains("://"))
}

/// The runtime transfers run on, and the artifact context from the process environment (the
/// standard credential variables, `TAILOR_PVC_ROOT`).
fn runtime() -> anyhow::Result<(tokio::runtime::Runtime, Context)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the artifact runtime")?;
    let mut ctx = Context::new(Env::from_process());
    ctx.pvc_root = std::env::var_os("TAILOR_PVC_ROOT").map(PathBuf::from);
    Ok((rt, ctx))
}

/// Fetches every input that is a URI into `<work>/inputs` (through the node-local cache when
/// one is given) and replaces it by the local path; `what` names each in errors. Local paths
/// are left alone, and nothing starts when there is no URI.
pub fn localize_inputs(
    inputs: &mut [(&str, &mut PathBuf)],
    work: &Path,
    cache: Option<PathBuf>,
) -> anyhow::Result<()> {
    if !inputs.iter().any(|(_, p)| is_uri(p)) {
        return Ok(());
    }
    let (rt, ctx) = runtime()?;
    let fetcher = Fetcher::new(ctx).with_cache(cache);
    let dir = work.join("inputs");
    for (what, p) in inputs.iter_mut().filter(|(_, p)| is_uri(p)) {
        let uri = ArtifactUri::parse(&p.display().to_string())?;
        **p = rt
            .block_on(fetcher.localize(&uri, &dir))
            .with_context(|| format!("fetching the {what}"))?;
    }
    Ok(())
}

/// An output directory given as a URI (`prepare`'s): written locally, then uploaded whole.
pub struct Upload {
    rt: tokio::runtime::Runtime,
    store: Store,
}

impl Upload {
    /// When `output` is a URI: points it at a local directory (under `work`, default the
    /// temporary directory) and returns what uploads it there afterwards.
    pub fn redirect(output: &mut PathBuf, work: Option<&Path>) -> anyhow::Result<Option<Self>> {
        if !is_uri(output) {
            return Ok(None);
        }
        let uri = ArtifactUri::parse(&output.display().to_string())?;
        let (rt, ctx) = runtime()?;
        let store = Store::open(&uri, &ctx)?;
        let local = work
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("tailor-output-{}", short_hash(&uri.to_string())));
        *output = local;
        Ok(Some(Self { rt, store }))
    }

    /// Uploads every file of `local`, `last` after all others (its presence in the store says
    /// the upload is whole). Returns the store URI.
    pub fn finish(&self, local: &Path, last: &str) -> anyhow::Result<String> {
        let uri = self.store.uri().to_string();
        self.rt.block_on(async {
            for f in local_files(local)?.iter().filter(|f| *f != last) {
                self.store.put_file(f, &local.join(f)).await?;
            }
            if local.join(last).exists() {
                self.store.put_file(last, &local.join(last)).await?;
            }
            anyhow::Ok(())
        })?;
        tracing::info!(output = %uri, "output uploaded");
        Ok(uri)
    }
}

/// The output store of a run whose `output` is a URI.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    store: Option<Store>,
}

/// A checkpoint's directory in the store.
fn step_dir(step: usize) -> String {
    format!("checkpoints/{}", checkpoint_dir(step))
}

/// Complete checkpoint steps in a listing of `checkpoints/`, sorted.
fn complete_steps(paths: &[String]) -> Vec<usize> {
    complete_checkpoints(paths.iter().map(String::as_str))
}

impl Remote {
    /// Fetches the inputs that are URIs and redirects a URI output to the work directory.
    /// `None` when every setting is a local path (nothing changes then).
    pub fn prepare(cfg: &mut TrainConfig) -> anyhow::Result<Option<Self>> {
        let inputs_are_uris = is_uri(&cfg.base_model)
            || is_uri(&cfg.train)
            || cfg.validation.as_deref().is_some_and(is_uri)
            || cfg.init_adapter.as_deref().is_some_and(is_uri);
        if !inputs_are_uris && !is_uri(&cfg.output) {
            return Ok(None);
        }
        let (rt, ctx) = runtime()?;
        let work = cfg.work_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "tailor-trainer-{}",
                short_hash(&cfg.output.display().to_string())
            ))
        });
        let fetcher = Fetcher::new(ctx.clone()).with_cache(cfg.artifact_cache.clone());
        let inputs = work.join("inputs");
        let localize = |p: &Path| -> anyhow::Result<PathBuf> {
            let uri = ArtifactUri::parse(&p.display().to_string())?;
            Ok(rt.block_on(fetcher.localize(&uri, &inputs))?)
        };
        if is_uri(&cfg.base_model) {
            // Adapters record the model as the user named it, not where this pod put it.
            cfg.base_model_name
                .get_or_insert_with(|| cfg.base_model.display().to_string());
            cfg.base_model = localize(&cfg.base_model).context("fetching the base model")?;
        }
        if is_uri(&cfg.train) {
            cfg.train = localize(&cfg.train).context("fetching the training data")?;
        }
        if let Some(v) = cfg.validation.as_mut().filter(|v| is_uri(v)) {
            *v = localize(v).context("fetching the validation data")?;
        }
        if let Some(a) = cfg.init_adapter.as_mut().filter(|a| is_uri(a)) {
            *a = localize(a).context("fetching the initial adapter")?;
        }
        let store = if is_uri(&cfg.output) {
            let uri = ArtifactUri::parse(&cfg.output.display().to_string())?;
            let store = Store::open(&uri, &ctx)?;
            let local = work.join("output");
            rt.block_on(pull_latest_checkpoint(&fetcher, &store, &local))?;
            cfg.output = local;
            Some(store)
        } else {
            None
        };
        Ok(Some(Self { rt, store }))
    }

    /// Uploads a checkpoint directory just written (`state.json` last) and prunes older ones.
    pub fn checkpoint_written(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("checkpoint directory without a name")?;
        let rel = format!("checkpoints/{name}");
        self.rt.block_on(async {
            let files = local_files(dir)?;
            for f in files
                .iter()
                .filter(|f| *f != "state.json" && !f.starts_with(".tailor-fetch/"))
            {
                store.put_file(&format!("{rel}/{f}"), &dir.join(f)).await?;
            }
            store
                .put_file(&format!("{rel}/state.json"), &dir.join("state.json"))
                .await?;
            tracing::info!(checkpoint = %store.uri().join(&rel), "checkpoint uploaded");
            let listed: Vec<String> = store
                .list("checkpoints")
                .await?
                .into_iter()
                .map(|o| o.path)
                .collect();
            let steps = complete_steps(&listed);
            for old in steps.iter().take(steps.len().saturating_sub(KEEP)) {
                // state.json first: a half-deleted checkpoint is an incomplete one.
                store
                    .delete(&format!("{}/state.json", step_dir(*old)))
                    .await?;
                store.delete_prefix(&step_dir(*old)).await?;
            }
            anyhow::Ok(())
        })
    }

    /// Uploads the finished adapter and metrics (`metrics.json` last, with `adapter` set to
    /// the output URI). Returns that URI.
    pub fn finish(&self, output: &Path) -> anyhow::Result<Option<String>> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let uri = store.uri().to_string();
        let metrics = output.join("metrics.json");
        let mut m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&metrics).with_context(|| format!("reading {}", metrics.display()))?,
        )?;
        m["adapter"] = serde_json::json!(uri);
        std::fs::write(&metrics, serde_json::to_vec_pretty(&m)?)?;
        self.rt.block_on(async {
            for f in [
                "adapter_config.json",
                "adapter_model.safetensors",
                "metrics.json",
            ] {
                store.put_file(f, &output.join(f)).await?;
            }
            tracing::info!(adapter = %uri, "adapter uploaded");
            anyhow::Ok(())
        })?;
        Ok(Some(uri))
    }
}

/// Brings the store's newest complete checkpoint into `<local>/checkpoints/` unless the local
/// disk already has it or a newer one.
async fn pull_latest_checkpoint(
    fetcher: &Fetcher,
    store: &Store,
    local: &Path,
) -> anyhow::Result<()> {
    let listed: Vec<String> = store
        .list("checkpoints")
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    let Some(&step) = complete_steps(&listed).last() else {
        return Ok(());
    };
    let local_latest = crate::run_state::latest(&local.join("checkpoints"))?
        .and_then(|p| checkpoint_step(p.file_name()?.to_str()?));
    if local_latest.is_some_and(|l| l >= step) {
        return Ok(());
    }
    let rel = step_dir(step);
    let target = local.join(&rel);
    fetcher
        .fetch(&store.uri().join(&rel), Some(&target))
        .await
        .with_context(|| format!("pulling checkpoint {rel}"))?;
    tracing::info!(step, from = %store.uri().join(&rel), "pulled the newest checkpoint from the store");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_told_from_paths() {
        assert!(is_uri(Path::new("s3://b/k")) && !is_uri(Path::new("/data/x")));
    }
}
