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
/// local copy): `pvc://`, `file://`, object stores and `hf://`.
pub async fn inspect(uri: &ArtifactUri, ctx: &Context) -> Result<AdapterArtifact> {
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
        let weights = store.sha256(WEIGHTS).await?;
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
