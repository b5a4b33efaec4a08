//! What the operator reads back of the artifacts its pods produced (a Dataset's `stats.json`,
//! a run's checkpoints, `metrics.json`, adapter weights, evaluation report): on its mount of the
//! artifact volume, or — with `artifactStore` — in the namespace's area of the bucket, with the
//! namespace's own store Secret (whose endpoint the admin must allow, as for any tenant
//! Secret the operator uses). Every read is bounded.

use tailor_api::LocalRef;
use tailor_artifacts::{ArtifactUri, Store};
use tailor_wire::train::{checkpoint_dir, complete_checkpoints};

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

/// Time one read of a bucket may take (a listing, a small file, an adapter's weights streamed
/// through sha256), as the operator's verification of stored adapters.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Objects a run's `checkpoints/` may hold (the trainer keeps two complete checkpoints).
const MAX_CHECKPOINT_OBJECTS: usize = 10_000;

/// One artifact of a namespace where the operator reads it: a directory on its mount of the
/// artifact volume, or a prefix of the bucket opened with the namespace's store Secret (read
/// once per handle).
pub enum Stored {
    Volume(artifacts::StorePath),
    Bucket(Store),
}

impl Stored {
    /// The artifact at `uri` of namespace `ns`.
    pub async fn open(ctx: &Context, ns: &str, uri: &str) -> Result<Self, String> {
        let cfg = &ctx.config;
        let Some(secret) = store_secret(cfg, ns, uri) else {
            return artifacts::operator_path(cfg, ns, uri).map(Stored::Volume);
        };
        let env = crate::inputs::credentials(
            ctx,
            ns,
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
            .map(Stored::Bucket)
            .map_err(|e| e.to_string())
    }

    /// A bucket read within [`READ_TIMEOUT`].
    async fn timed<T>(
        &self,
        what: &str,
        read: impl std::future::Future<Output = tailor_artifacts::Result<T>>,
    ) -> Result<T, String> {
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| format!("{what}: took longer than {}s", READ_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())
    }

    /// `file` of the artifact, at most `limit` bytes.
    pub async fn read(&self, file: &str, limit: u64) -> Result<Vec<u8>, String> {
        match self {
            Stored::Volume(dir) => {
                let p = dir.join(file);
                tokio::task::spawn_blocking(move || {
                    artifacts::read_bounded(&p, limit)
                        .map_err(|e| format!("{}: {e}", p.path.display()))
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Stored::Bucket(store) => self
                .timed(file, store.read_bytes(file, limit))
                .await
                .map(|b| b.to_vec()),
        }
    }

    /// sha256 and size of `file` of the artifact (refused beyond `limit` bytes).
    pub async fn sha256(&self, file: &str, limit: u64) -> Result<(String, u64), String> {
        match self {
            Stored::Volume(dir) => {
                let p = dir.join(file);
                tokio::task::spawn_blocking(move || {
                    artifacts::sha256_file(&p).map_err(|e| format!("{}: {e}", p.path.display()))
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Stored::Bucket(store) => self.timed(file, store.sha256_within(file, limit)).await,
        }
    }

    /// The newest complete checkpoint of the run writing here: its step and directory name
    /// under `checkpoints/`.
    pub async fn latest_checkpoint(&self) -> Option<(u64, String)> {
        match self {
            Stored::Volume(dir) => {
                let (step, path) = artifacts::latest_checkpoint(&dir.path)?;
                Some((step, path.file_name()?.to_string_lossy().into_owned()))
            }
            Stored::Bucket(store) => {
                let listed = self
                    .timed(
                        "checkpoints",
                        store.list_at_most("checkpoints", MAX_CHECKPOINT_OBJECTS),
                    )
                    .await
                    .ok()?;
                let step = *complete_checkpoints(listed.iter().map(|o| o.path.as_str())).last()?;
                Some((step as u64, checkpoint_dir(step)))
            }
        }
    }
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
}
