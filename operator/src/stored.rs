//! What the operator reads back of the artifacts its pods produced (a Dataset's `stats.json`,
//! a run's checkpoints, `metrics.json`, adapter weights, evaluation report): on its mount of the
//! artifact volume, or — with `artifactStore` — in the namespace's area of the bucket, with the
//! namespace's own store Secret (whose endpoint the admin must allow, as for any tenant
//! Secret the operator uses). Every read is bounded.

use tailor_api::LocalRef;
use tailor_artifacts::{ArtifactUri, Store};

use crate::artifacts;
use crate::config::OperatorConfig;
use crate::context::Context;

/// Where a namespace's outputs go: `rel` (`datasets/<name>/<hash>`, `finetune/<run>`) in its
/// area of the artifact store when one is configured, else in its area of the artifact claim.
pub fn output_uri(cfg: &OperatorConfig, ns: &str, rel: &str) -> String {
    match &cfg.artifact_store {
        Some(s) => format!(
            "{}/{ns}/{}",
            s.uri.trim_end_matches('/'),
            rel.trim_matches('/')
        ),
        None => artifacts::pvc_uri(&cfg.artifacts_claim, rel),
    }
}

/// The Secret with namespace `ns`'s store credentials, when `uri` lies in its area of the
/// artifact store (what its pods read and write there with).
pub fn store_secret<'a>(cfg: &'a OperatorConfig, ns: &str, uri: &str) -> Option<&'a str> {
    let s = cfg.artifact_store.as_ref()?;
    let area = format!("{}/{ns}/", s.uri.trim_end_matches('/'));
    uri.starts_with(&area)
        .then_some(s.credentials_secret.as_str())
}

/// The reads of one namespace's artifacts.
pub struct Stored<'a> {
    pub ctx: &'a Context,
    pub ns: &'a str,
}

/// Where an artifact is, as the operator reads it.
enum Place {
    Volume(artifacts::StorePath),
    Bucket(Store),
}

impl Stored<'_> {
    async fn place(&self, uri: &str) -> Result<Place, String> {
        let cfg = &self.ctx.config;
        let Some(secret) = store_secret(cfg, self.ns, uri) else {
            return artifacts::operator_path(cfg, self.ns, uri).map(Place::Volume);
        };
        let env = crate::inputs::credentials(
            self.ctx,
            self.ns,
            "artifactStore.credentialsSecret",
            Some(&LocalRef {
                name: secret.to_string(),
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
        crate::inputs::endpoints_allowed(cfg, &env).map_err(|e| format!("{uri}: {e}"))?;
        let parsed = ArtifactUri::parse(uri).map_err(|e| e.to_string())?;
        Store::open(&parsed, &tailor_artifacts::Context::new(env))
            .map(Place::Bucket)
            .map_err(|e| e.to_string())
    }

    /// `file` of the artifact at `uri`, at most `limit` bytes.
    pub async fn read(&self, uri: &str, file: &str, limit: u64) -> Result<Vec<u8>, String> {
        match self.place(uri).await? {
            Place::Volume(dir) => {
                let p = dir.join(file);
                tokio::task::spawn_blocking(move || {
                    artifacts::read_bounded(&p, limit)
                        .map_err(|e| format!("{}: {e}", p.path.display()))
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Place::Bucket(store) => store
                .read_bytes(file, limit)
                .await
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string()),
        }
    }

    /// sha256 and size of `file` of the artifact at `uri` (refused beyond `limit` bytes).
    pub async fn sha256(&self, uri: &str, file: &str, limit: u64) -> Result<(String, u64), String> {
        match self.place(uri).await? {
            Place::Volume(dir) => {
                let p = dir.join(file);
                tokio::task::spawn_blocking(move || {
                    artifacts::sha256_file(&p).map_err(|e| format!("{}: {e}", p.path.display()))
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Place::Bucket(store) => store
                .sha256_within(file, limit)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// The newest complete checkpoint of the run writing to `uri` (one with its `state.json`):
    /// its step and directory name under `checkpoints/`.
    pub async fn latest_checkpoint(&self, uri: &str) -> Option<(u64, String)> {
        match self.place(uri).await.ok()? {
            Place::Volume(dir) => {
                let (step, path) = artifacts::latest_checkpoint(&dir.path)?;
                Some((step, path.file_name()?.to_string_lossy().into_owned()))
            }
            Place::Bucket(store) => {
                let listed = store.list("checkpoints").await.ok()?;
                latest_listed(listed.iter().map(|o| o.path.as_str()))
            }
        }
    }
}

/// The newest complete checkpoint in a listing of `checkpoints/` (`checkpoints/step-N/state.json`
/// marks one complete): its step and directory name.
fn latest_listed<'a>(paths: impl Iterator<Item = &'a str>) -> Option<(u64, String)> {
    paths
        .filter_map(|p| {
            let (dir, file) = p.strip_prefix("checkpoints/")?.split_once('/')?;
            let step = dir.strip_prefix("step-")?.parse().ok()?;
            (file == "state.json").then(|| (step, dir.to_string()))
        })
        .max_by_key(|(s, _)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_store() -> OperatorConfig {
        let mut cfg = OperatorConfig::for_tests();
        cfg.artifact_store = Some(crate::config::ArtifactStore {
            uri: "s3://acme-ml/tailor/".into(),
            credentials_secret: "tailor-store".into(),
        });
        cfg
    }

    #[test]
    fn outputs_go_to_the_namespaces_area_of_the_store_or_the_claim() {
        let cfg = OperatorConfig::for_tests();
        assert_eq!(
            output_uri(&cfg, "team-a", "datasets/chat/abc"),
            "pvc://tailor-artifacts/datasets/chat/abc"
        );
        assert_eq!(
            store_secret(&cfg, "team-a", "pvc://tailor-artifacts/x"),
            None
        );
        let cfg = with_store();
        let uri = output_uri(&cfg, "team-a", "/datasets/chat/abc/");
        assert_eq!(uri, "s3://acme-ml/tailor/team-a/datasets/chat/abc");
        assert_eq!(store_secret(&cfg, "team-a", &uri), Some("tailor-store"));
        // Another namespace's area, or elsewhere in the bucket: not read with this Secret.
        assert_eq!(store_secret(&cfg, "team-b", &uri), None);
        assert_eq!(
            store_secret(&cfg, "team-a", "s3://acme-ml/tailor/team-ab/x"),
            None
        );
        assert_eq!(
            store_secret(&cfg, "team-a", "s3://acme-ml/other/team-a/x"),
            None
        );
    }

    #[test]
    fn the_newest_complete_checkpoint_of_a_listing() {
        let listed = [
            "checkpoints/step-00000004/state.json",
            "checkpoints/step-00000008/adapter_model.safetensors",
            "checkpoints/step-00000008/state.json",
            "checkpoints/step-00000012/adapter_model.safetensors",
            "metrics.json",
        ];
        assert_eq!(
            latest_listed(listed.into_iter()),
            Some((8, "step-00000008".to_string()))
        );
        assert_eq!(latest_listed(["metrics.json"].into_iter()), None);
    }
}
