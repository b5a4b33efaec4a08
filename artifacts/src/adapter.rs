//! PEFT adapters by URI: what the operator verifies where an adapter is stored, and what a
//! server loads from a local, verified directory.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::fetch::{Fetched, Fetcher};
use crate::hub::Hub;
use crate::store::{Context, Store};
use crate::uri::ArtifactUri;

pub const WEIGHTS: &str = "adapter_model.safetensors";
pub const CONFIG: &str = "adapter_config.json";
/// adapter_config.json is a few hundred bytes; anything this large is not one.
const CONFIG_LIMIT: u64 = 1 << 20;

/// An adapter as stored: the weights' sha256 and size and the parsed adapter_config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterArtifact {
    pub sha256: String,
    pub size_bytes: u64,
    pub adapter_config: serde_json::Value,
}

/// Reads an adapter directory where it is stored, streaming the weights through sha256 (no
/// local copy): `pvc://`, `file://`, object stores and `hf://`. Weights larger than
/// `max_weights` bytes are refused (declared sizes before anything is read, streamed bytes as
/// they come), so whoever names the URI cannot make the reader stream without end.
pub async fn inspect(
    uri: &ArtifactUri,
    ctx: &Context,
    max_weights: u64,
) -> Result<AdapterArtifact> {
    let too_large = |what: String| {
        Error::plain(
            ErrorKind::Invalid,
            uri.join(WEIGHTS),
            format!("{what}, more than the {max_weights} an adapter may have here"),
        )
    };
    let (weights, config) = if let ArtifactUri::Hf { path, .. } = uri {
        let hub = Hub::new(&ctx.env)?;
        let rev = hub.revision(uri).await?;
        let in_repo = |f: &str| {
            if path.is_empty() {
                f.to_string()
            } else {
                format!("{path}/{f}")
            }
        };
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut s = hub.read(&rev, &in_repo(WEIGHTS), None).await?;
        while let Some(c) = s.next().await {
            let c = c?;
            n += c.len() as u64;
            if n > max_weights {
                return Err(too_large(format!("more than {n} bytes")));
            }
            h.update(&c);
        }
        let mut cfg = Vec::new();
        let mut s = hub.read(&rev, &in_repo(CONFIG), None).await?;
        while let Some(c) = s.next().await {
            cfg.extend_from_slice(&c?);
            if cfg.len() as u64 > CONFIG_LIMIT {
                return Err(Error::plain(
                    ErrorKind::Invalid,
                    uri.join(CONFIG),
                    "larger than an adapter config can be",
                ));
            }
        }
        ((hex::encode(h.finalize()), n), bytes::Bytes::from(cfg))
    } else {
        let store = Store::open(uri, ctx)?;
        let size = store.head(WEIGHTS).await?.size;
        if size > max_weights {
            return Err(too_large(format!("{size} bytes")));
        }
        let weights = store
            .sha256_within(WEIGHTS, max_weights)
            .await
            .map_err(|_| too_large(format!("more than {size} bytes as read")))?;
        let config = store.read_bytes(CONFIG, CONFIG_LIMIT).await?;
        (weights, config)
    };
    let adapter_config = serde_json::from_slice(&config).map_err(|e| {
        Error::plain(
            ErrorKind::Corrupt,
            uri.join(CONFIG),
            format!("not valid JSON: {e}"),
        )
    })?;
    Ok(AdapterArtifact {
        sha256: weights.0,
        size_bytes: weights.1,
        adapter_config,
    })
}

/// Turns an adapter URI into a local directory holding `adapter_config.json` and
/// `adapter_model.safetensors`, the weights verified against `expected_sha256` when given
/// (a `LoraAdapter`'s `spec.sha256`). `pvc://` and `file://` adapters are verified in place;
/// others are fetched into `dest` through `fetcher`'s cache.
pub async fn localize(
    fetcher: &Fetcher,
    uri: &ArtifactUri,
    dest: &Path,
    expected_sha256: Option<&str>,
) -> Result<PathBuf> {
    let dir = match fetcher.context().local_path(uri)? {
        Some(p) => {
            if let Some(want) = expected_sha256 {
                let weights = p.join(WEIGHTS);
                let w = weights.clone();
                let (got, _) = tokio::task::spawn_blocking(move || crate::store::sha256_file(&w))
                    .await
                    .map_err(|e| Error::plain(ErrorKind::Local, uri, e.to_string()))?
                    .map_err(|e| {
                        Error::plain(
                            crate::error::kind_of_io(&e),
                            uri.join(WEIGHTS),
                            format!("reading {}: {e}", weights.display()),
                        )
                    })?;
                if !got.eq_ignore_ascii_case(want) {
                    return Err(Error::plain(
                        ErrorKind::Corrupt,
                        uri.join(WEIGHTS),
                        format!("sha256 is {got}, the adapter records {want}"),
                    ));
                }
            }
            p
        }
        None => {
            let f = match expected_sha256 {
                Some(want) => fetcher.clone().expect_sha256(WEIGHTS, want),
                None => fetcher.clone(),
            };
            let Fetched { dir, .. } = f.fetch(uri, Some(dest)).await?;
            dir
        }
    };
    for needed in [CONFIG, WEIGHTS] {
        if !dir.join(needed).is_file() {
            return Err(Error::plain(
                ErrorKind::NotFound,
                uri.join(needed),
                "a PEFT adapter needs adapter_config.json and adapter_model.safetensors",
            ));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn weights_beyond_the_limit_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join(WEIGHTS), vec![7u8; 1000]).expect("weights");
        std::fs::write(dir.path().join(CONFIG), br#"{"r": 8}"#).expect("config");
        let uri = ArtifactUri::parse(&format!("file://{}", dir.path().display())).expect("uri");
        let ctx = Context::default();
        let a = inspect(&uri, &ctx, 1000).await.expect("within the limit");
        assert_eq!(a.size_bytes, 1000);
        assert_eq!(a.adapter_config["r"], 8);
        let e = inspect(&uri, &ctx, 999).await.expect_err("over the limit");
        let msg = e.to_string();
        assert!(
            msg.contains(WEIGHTS) && msg.contains("1000 bytes") && msg.contains("999"),
            "{msg}"
        );
    }
}
