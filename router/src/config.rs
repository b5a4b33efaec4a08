//! The router's configuration file: YAML (or JSON) as written by the operator ([`FileConfig`],
//! whose serde shape is `tailor_wire::router::Config`), and the validated form the request path
//! reads ([`RouterConfig`]).
//!
//! ```yaml
//! routes:
//!   - model: support-bot                 # the served name clients ask for
//!     targets:
//!       - name: stable                   # optional; default: revision, else model
//!         revision: v1                   # optional; targets sharing a revision back each other up
//!         backend: http://support-bot-v1:8000          # one URL or a list of URLs
//!         model: support-bot-v1          # the name the backend serves (adapter name)
//!         weight: 90                     # relative; need not sum to 100
//!       - name: canary
//!         revision: v2
//!         backend: [http://10.0.0.7:8000, http://10.0.0.8:8000]
//!         model: support-bot-v2
//!         weight: 10
//! apiKeys:                               # absent or empty: no authentication
//!   - name: team-a                       # metric label and rate-limit bucket
//!     key: sk-plaintext                  # exactly one of key, keyFile, sha256
//!     requestsPerMinute: 600             # optional; absent: unlimited
//!     burst: 20                          # optional; default: requestsPerMinute
//!   - name: team-b
//!     keyFile: /etc/tailor/keys/team-b   # relative paths are relative to the config file
//!   - name: team-c
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! timeouts:
//!   connect: 2s                          # "500ms" / "2s" / "5m" / "1h 30m", or a number of seconds
//!   request: 300s                        # until the backend's response headers arrive
//! maxBodyBytes: 4194304
//! stats:
//!   window: 60s                          # default sliding window of /stats
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::Uri;
use sha2::{Digest, Sha256};
pub use tailor_wire::router::parse_duration;
use tailor_wire::router::{Config, DurationValue};

/// Why a configuration was rejected. The previous configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Invalid(String),
}

/// The file as written, before validation. Its shape is [`tailor_wire::router::Config`], the
/// type the operator writes it with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig(pub Config);

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_STATS_WINDOW: Duration = Duration::from_secs(60);

/// The validated configuration.
#[derive(Debug)]
pub struct RouterConfig {
    pub routes: HashMap<String, Route>,
    /// Served names in file order, for `/v1/models`.
    pub route_order: Vec<String>,
    /// `None`: authentication is off.
    pub api_keys: Option<Vec<ApiKey>>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub stats_window: Duration,
    /// Files whose content is part of the configuration (key files), watched for changes.
    pub watched_files: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct Route {
    pub model: String,
    pub targets: Vec<Target>,
}

impl Route {
    pub fn weights(&self) -> Vec<u32> {
        self.targets.iter().map(|t| t.weight).collect()
    }
}

#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub revision: Option<String>,
    /// Base URLs (`http://host:port[/prefix]`, no trailing slash).
    pub backends: Vec<String>,
    pub model: String,
    pub weight: u32,
    /// Round-robin position over `backends`.
    pub next_backend: AtomicUsize,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub requests_per_minute: Option<u32>,
    pub burst: Option<u32>,
}

/// SHA-256 of a key, as compared against presented keys.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_saphyr::from_str(text)
            .map(FileConfig)
            .map_err(|e| ConfigError::Yaml(e.to_string()))
    }

    /// Checks the file and resolves key files (relative to `base_dir`).
    pub fn validate(self, base_dir: &Path) -> Result<RouterConfig, ConfigError> {
        let file = self.0;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut routes = HashMap::new();
        let mut route_order = Vec::new();
        for route in file.routes {
            if route.model.is_empty() {
                return invalid("routes: a route has an empty `model`".into());
            }
            if route.targets.is_empty() {
                return invalid(format!("route {:?}: no targets", route.model));
            }
            let mut names = HashSet::new();
            let mut targets = Vec::new();
            for (i, t) in route.targets.into_iter().enumerate() {
                let name = t
                    .name
                    .clone()
                    .or_else(|| t.revision.clone())
                    .unwrap_or_else(|| t.model.clone());
                if name.is_empty() || t.model.is_empty() {
                    return invalid(format!(
                        "route {:?} target {i}: empty name or model",
                        route.model
                    ));
                }
                if !names.insert(name.clone()) {
                    return invalid(format!(
                        "route {:?}: two targets are named {name:?} (set `name` to tell them apart)",
                        route.model
                    ));
                }
                let urls = t.backend.urls();
                if urls.is_empty() {
                    return invalid(format!(
                        "route {:?} target {name:?}: empty backend list",
                        route.model
                    ));
                }
                let backends = urls
                    .iter()
                    .map(|u| normalize_backend(u))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ConfigError::Invalid(format!(
                            "route {:?} target {name:?}: {e}",
                            route.model
                        ))
                    })?;
                targets.push(Target {
                    name,
                    revision: t.revision.filter(|r| !r.is_empty()),
                    backends,
                    model: t.model,
                    weight: t.weight,
                    next_backend: AtomicUsize::new(0),
                });
            }
            if targets.iter().all(|t| t.weight == 0) {
                return invalid(format!("route {:?}: all weights are 0", route.model));
            }
            if routes.contains_key(&route.model) {
                return invalid(format!("route {:?} is listed twice", route.model));
            }
            route_order.push(route.model.clone());
            routes.insert(
                route.model.clone(),
                Route {
                    model: route.model,
                    targets,
                },
            );
        }

        let mut watched_files = Vec::new();
        let api_keys = match file.api_keys {
            None => None,
            Some(keys) if keys.is_empty() => None,
            Some(keys) => {
                let mut out = Vec::new();
                let mut names = HashSet::new();
                for k in keys {
                    if !names.insert(k.name.clone()) {
                        return invalid(format!("apiKeys: the name {:?} is used twice", k.name));
                    }
                    let sha256 = match (&k.key, &k.key_file, &k.sha256) {
                        (Some(key), None, None) if !key.is_empty() => key_digest(key),
                        (None, Some(file), None) => {
                            let path = base_dir.join(file);
                            let text = std::fs::read_to_string(&path).map_err(|source| {
                                ConfigError::Read {
                                    path: path.clone(),
                                    source,
                                }
                            })?;
                            watched_files.push(path.clone());
                            let key = text.trim();
                            if key.is_empty() {
                                return invalid(format!(
                                    "apiKeys {:?}: {} is empty",
                                    k.name,
                                    path.display()
                                ));
                            }
                            key_digest(key)
                        }
                        (None, None, Some(hex_digest)) => {
                            let bytes = hex::decode(hex_digest.trim()).ok();
                            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                                Some(d) => d,
                                None => {
                                    return invalid(format!(
                                        "apiKeys {:?}: sha256 must be 64 hex digits",
                                        k.name
                                    ));
                                }
                            }
                        }
                        _ => {
                            return invalid(format!(
                                "apiKeys {:?}: set exactly one of key, keyFile, sha256",
                                k.name
                            ));
                        }
                    };
                    if k.requests_per_minute == Some(0) || k.burst == Some(0) {
                        return invalid(format!(
                            "apiKeys {:?}: requestsPerMinute and burst must be positive",
                            k.name
                        ));
                    }
                    out.push(ApiKey {
                        name: k.name,
                        sha256,
                        requests_per_minute: k.requests_per_minute,
                        burst: k.burst,
                    });
                }
                Some(out)
            }
        };

        let max_body_bytes = file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return invalid("maxBodyBytes must be positive".into());
        }
        Ok(RouterConfig {
            routes,
            route_order,
            api_keys,
            connect_timeout: opt_duration(&file.timeouts.connect, "timeouts.connect")?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            request_timeout: opt_duration(&file.timeouts.request, "timeouts.request")?
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            max_body_bytes,
            stats_window: opt_duration(&file.stats.window, "stats.window")?
                .unwrap_or(DEFAULT_STATS_WINDOW),
            watched_files,
        })
    }
}

fn opt_duration(v: &Option<DurationValue>, field: &str) -> Result<Option<Duration>, ConfigError> {
    v.as_ref()
        .map(|d| {
            d.to_duration()
                .map_err(|e| ConfigError::Invalid(format!("{field}: {e}")))
        })
        .transpose()
}

/// Checks a backend URL (plain `http://host:port[/prefix]`) and drops a trailing slash.
fn normalize_backend(url: &str) -> Result<String, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("backend {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "backend {url:?}: scheme {other:?} is not supported (only http)"
            ));
        }
        None => return Err(format!("backend {url:?}: missing http:// scheme")),
    }
    if uri.authority().is_none() {
        return Err(format!("backend {url:?}: missing host"));
    }
    if uri.query().is_some() {
        return Err(format!("backend {url:?}: must not have a query"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<RouterConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    FileConfig::parse(&text)?.validate(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
routes:
  - model: bot
    targets:
      - name: stable
        revision: v1
        backend: http://a:8000/
        model: bot-v1
        weight: 90
      - revision: v2
        backend: [http://b:8000, http://c:8000/prefix]
        model: bot-v2
        weight: 10
apiKeys:
  - name: team-a
    key: sk-a
    requestsPerMinute: 60
    burst: 5
  - name: team-c
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
timeouts:
  connect: 500ms
  request: 30
maxBodyBytes: 1000
stats:
  window: 2m
"#;

    #[test]
    fn parses_the_documented_shape() {
        let cfg = FileConfig::parse(EXAMPLE)
            .and_then(|f| f.validate(Path::new(".")))
            .expect("valid");
        let route = &cfg.routes["bot"];
        assert_eq!(route.targets[0].name, "stable");
        assert_eq!(route.targets[0].backends, vec!["http://a:8000"]);
        assert_eq!(route.targets[1].name, "v2", "name defaults to the revision");
        assert_eq!(route.targets[1].backends.len(), 2);
        assert_eq!(route.weights(), vec![90, 10]);
        let keys = cfg.api_keys.expect("auth on");
        assert_eq!(keys[0].sha256, key_digest("sk-a"));
        assert_eq!(keys[1].sha256, key_digest("test"));
        assert_eq!(cfg.connect_timeout, Duration::from_millis(500));
        assert_eq!(cfg.request_timeout, Duration::from_secs(30));
        assert_eq!(cfg.stats_window, Duration::from_secs(120));
        assert_eq!(cfg.max_body_bytes, 1000);
    }

    #[test]
    fn rejects_bad_configs() {
        let cases = [
            ("routes: [{model: m, targets: []}]", "no targets"),
            (
                "routes: [{model: m, targets: [{backend: 'https://x', model: a, weight: 1}]}]",
                "only http",
            ),
            (
                "routes: [{model: m, targets: [{backend: 'http://x', model: a, weight: 0}]}]",
                "all weights are 0",
            ),
            (
                "routes: [{model: m, targets: [{backend: 'http://x', model: a, weight: 1}, {backend: 'http://y', model: a, weight: 1}]}]",
                "two targets",
            ),
            ("apiKeys: [{name: a}]", "exactly one"),
            ("apiKeys: [{name: a, sha256: abc}]", "64 hex"),
            ("timeouts: {connect: soon}", "timeouts.connect"),
            ("routs: []", "unknown field"),
        ];
        for (yaml, expected) in cases {
            let err = FileConfig::parse(yaml)
                .and_then(|f| f.validate(Path::new(".")))
                .err()
                .unwrap_or_else(|| panic!("{yaml} should be rejected"));
            assert!(
                err.to_string().contains(expected),
                "{yaml}: {err} should mention {expected}"
            );
        }
    }
}
