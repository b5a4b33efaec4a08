//! Shared state: the current configuration snapshot (swapped whole on reload) and the parts that
//! outlive reloads (metrics, statistics, rate-limit buckets).
//!
//! A request clones the `Arc<Snapshot>` once at its start and uses only that, so a reload never
//! changes a request midway and never waits for requests to finish: the old snapshot is freed
//! when its last request ends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use crate::auth::Limiters;
use crate::config::{ConfigError, FileConfig, RouterConfig};
use crate::metrics::{Metrics, ResultLabels};
use crate::stats::StatsRegistry;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One loaded configuration and the HTTP client built for its timeouts.
pub struct Snapshot {
    pub config: RouterConfig,
    pub client: HttpClient,
    /// Hex SHA-256 of the config file's bytes as loaded.
    pub sha256: String,
    /// 1 for the configuration loaded at start, +1 per successful reload.
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// SHA-256 over the config file and the key files it names: a change triggers a reload.
    fingerprint: [u8; 32],
}

pub struct AppState {
    current: RwLock<Arc<Snapshot>>,
    pub metrics: Metrics,
    pub stats: StatsRegistry,
    pub limiters: Limiters,
    pub config_path: PathBuf,
    last_error: Mutex<Option<String>>,
}

fn build_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

fn fingerprint(config_bytes: &[u8], watched: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(config_bytes);
    for path in watched {
        h.update(path.as_os_str().as_encoded_bytes());
        // A missing key file reads as empty: the reload then reports the error.
        h.update(std::fs::read(path).unwrap_or_default());
    }
    h.finalize().into()
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<RouterConfig, ConfigError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ConfigError::Invalid(format!("the file is not UTF-8: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    FileConfig::parse(text)?.validate(base)
}

impl AppState {
    /// Loads the configuration at `path`; `stats_retention` is the longest `/stats` window.
    pub fn load(path: &Path, stats_retention: Duration) -> Result<Arc<Self>, ConfigError> {
        let bytes = read(path)?;
        let config = parse(path, &bytes)?;
        let snapshot = Snapshot {
            client: build_client(config.connect_timeout),
            sha256: hex::encode(Sha256::digest(&bytes)),
            generation: 1,
            loaded_at: SystemTime::now(),
            fingerprint: fingerprint(&bytes, &config.watched_files),
            config,
        };
        let metrics = Metrics::new();
        metrics
            .reloads
            .get_or_create(&ResultLabels {
                result: "ok".into(),
            })
            .inc();
        Ok(Arc::new(AppState {
            current: RwLock::new(Arc::new(snapshot)),
            metrics,
            stats: StatsRegistry::new(stats_retention),
            limiters: Limiters::default(),
            config_path: path.to_path_buf(),
            last_error: Mutex::new(None),
        }))
    }

    /// The configuration in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last reload error, cleared by the next successful reload.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the config file (following symlinks, so a ConfigMap's `..data` swap is seen)
    /// and swaps in the new configuration if the file or a key file changed. Returns whether it
    /// swapped. On error the current configuration stays.
    pub fn reload_if_changed(&self) -> Result<bool, ConfigError> {
        let current = self.snapshot();
        let result: Result<Option<(Vec<u8>, RouterConfig)>, ConfigError> = (|| {
            let bytes = read(&self.config_path)?;
            if fingerprint(&bytes, &current.config.watched_files) == current.fingerprint {
                return Ok(None);
            }
            let config = parse(&self.config_path, &bytes)?;
            Ok(Some((bytes, config)))
        })();
        let (bytes, config) = match result {
            Ok(None) => return Ok(false),
            Ok(Some(v)) => v,
            Err(e) => {
                let message = e.to_string();
                let mut last = self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // Count and log a bad file once, not on every poll.
                if last.as_deref() != Some(message.as_str()) {
                    self.metrics
                        .reloads
                        .get_or_create(&ResultLabels {
                            result: "error".into(),
                        })
                        .inc();
                    *last = Some(message);
                    return Err(e);
                }
                return Ok(false);
            }
        };
        let client = if config.connect_timeout == current.config.connect_timeout {
            current.client.clone()
        } else {
            build_client(config.connect_timeout)
        };
        let snapshot = Snapshot {
            client,
            sha256: hex::encode(Sha256::digest(&bytes)),
            generation: current.generation + 1,
            loaded_at: SystemTime::now(),
            fingerprint: fingerprint(&bytes, &config.watched_files),
            config,
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.metrics
            .reloads
            .get_or_create(&ResultLabels {
                result: "ok".into(),
            })
            .inc();
        Ok(true)
    }
}
