//! Shared state: the current configuration snapshot (swapped whole on reload), the parts that
//! outlive reloads (metrics, statistics, rate-limit buckets, tokens) and the command line's
//! request limits.
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
use tokio::sync::Semaphore;

use crate::auth::Limiters;
use crate::config::{ConfigError, FileConfig, RouterConfig};
use crate::metrics::{Metrics, ResultLabels};
use crate::stats::StatsRegistry;
use crate::tokens::TokenFile;

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

/// What the command line sets beside the config file.
#[derive(Debug)]
pub struct Settings {
    /// The longest `/stats` window (and how long request samples are kept).
    pub stats_retention: Duration,
    /// How long a request body may take to arrive, whole.
    pub body_read_timeout: Duration,
    /// Proxied requests in progress at once; beyond, 429.
    pub max_in_flight: usize,
    /// Presented to the backends as `Authorization: Bearer`.
    pub backend_token: Option<TokenFile>,
    /// Required by `/stats` when set.
    pub admin_token: Option<TokenFile>,
}

impl Settings {
    /// Defaults for everything but the retention (tests, tools).
    pub fn new(stats_retention: Duration) -> Self {
        Settings {
            stats_retention,
            body_read_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            backend_token: None,
            admin_token: None,
        }
    }
}

pub struct AppState {
    current: RwLock<Arc<Snapshot>>,
    pub metrics: Metrics,
    pub stats: StatsRegistry,
    pub limiters: Limiters,
    pub config_path: PathBuf,
    last_error: Mutex<Option<String>>,
    pub body_read_timeout: Duration,
    /// One permit per proxied request in progress, held until its response body ends.
    pub in_flight: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub backend_token: Option<TokenFile>,
    pub admin_token: Option<TokenFile>,
    /// The last error of each token file (backend, admin), so it is logged once.
    token_errors: Mutex<[Option<String>; 2]>,
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
    /// Loads the configuration at `path`.
    pub fn load(path: &Path, settings: Settings) -> Result<Arc<Self>, ConfigError> {
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
            stats: StatsRegistry::new(settings.stats_retention),
            limiters: Limiters::default(),
            config_path: path.to_path_buf(),
            last_error: Mutex::new(None),
            body_read_timeout: settings.body_read_timeout,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            max_in_flight: settings.max_in_flight,
            backend_token: settings.backend_token,
            admin_token: settings.admin_token,
            token_errors: Mutex::new([None, None]),
        }))
    }

    /// Re-reads the token files, logging a change or a new error (by path: never the value).
    /// A file that cannot be read keeps its previous token.
    pub fn reload_tokens(&self) {
        let files = [
            ("backend", &self.backend_token),
            ("admin", &self.admin_token),
        ];
        for (i, (which, file)) in files.into_iter().enumerate() {
            let Some(file) = file else { continue };
            let result = file.reload_if_changed();
            let mut errors = self
                .token_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match result {
                Ok(changed) => {
                    if changed {
                        tracing::info!(token = which, path = %file.path().display(), "token file changed: using the new token");
                    }
                    errors[i] = None;
                }
                Err(e) => {
                    let message = e.to_string();
                    if errors[i].as_deref() != Some(message.as_str()) {
                        tracing::error!(token = which, error = %message, "keeping the previous token");
                        errors[i] = Some(message);
                    }
                }
            }
        }
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
