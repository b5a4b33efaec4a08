//! tailor-router's two contracts with the operator: the config file the operator writes
//! ([`Config`], YAML or JSON; the router validates it) and the `/stats` answer the operator's
//! canary analysis reads ([`Stats`]). router/README.md documents both shapes.
//!
//! Durations, in the config file and on every tailor-router flag, are written one way:
//! humantime's `500ms`, `30s`, `5m`, `1h 30m` ([`parse_duration`], [`format_duration`]).

use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Durations

/// Parses a positive duration written as `500ms`, `30s`, `1.5s`, `5m` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as 500ms, 30s or 5m, got {text:?} ({e})"))?;
    if d.is_zero() {
        return Err(format!("expected a positive duration, got {text:?}"));
    }
    Ok(d)
}

/// Writes a duration the way [`parse_duration`] reads it (`30s`, `1m 30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A duration in the config file: a string such as `30s`, or a number of seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(f64),
    Text(String),
}

impl DurationValue {
    /// The duration, or why it is not one (the caller names the field).
    pub fn to_duration(&self) -> Result<Duration, String> {
        match self {
            DurationValue::Seconds(s) if s.is_finite() && *s > 0.0 && *s < 1e9 => {
                Ok(Duration::from_secs_f64(*s))
            }
            DurationValue::Seconds(s) => Err(format!(
                "expected a positive number of seconds or a duration such as 30s, got {s}"
            )),
            DurationValue::Text(t) => parse_duration(t),
        }
    }
}

impl From<Duration> for DurationValue {
    fn from(d: Duration) -> Self {
        DurationValue::Text(format_duration(d))
    }
}

// ---------------------------------------------------------------------------------------------
// Config file

/// The router's config file as written. Unknown fields are rejected, so a typo fails loudly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Absent, null or empty: authentication is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<ApiKey>>,
    #[serde(default, skip_serializing_if = "Timeouts::is_unset")]
    pub timeouts: Timeouts,
    /// Largest request body; default 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "StatsSettings::is_unset")]
    pub stats: StatsSettings,
}

/// A served name and the targets its traffic is split over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// The served name clients ask for.
    pub model: String,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Unique per route; default: the revision, else the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Targets sharing a revision back each other up on connection failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub backend: Backends,
    /// The name the backend serves (the adapter name).
    pub model: String,
    /// Relative; need not sum to 100. 0 takes no traffic.
    pub weight: u32,
}

/// `backend: URL` (a Service) or `backend: [URL, ...]` (pods, round-robin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Backends {
    One(String),
    Many(Vec<String>),
}

impl Backends {
    pub fn urls(&self) -> Vec<&str> {
        match self {
            Backends::One(u) => vec![u.as_str()],
            Backends::Many(us) => us.iter().map(String::as_str).collect(),
        }
    }
}

/// An API key: exactly one of `key`, `key_file`, `sha256` (the router checks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// Metric label and rate-limit bucket; unique.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A file holding the key (trimmed); relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    /// Hex SHA-256 of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Absent: unlimited. Per router pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Default: `requests_per_minute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<DurationValue>,
    /// Until the backend's response headers; default 600s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<DurationValue>,
}

impl Timeouts {
    fn is_unset(&self) -> bool {
        self.connect.is_none() && self.request.is_none()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatsSettings {
    /// Default window of `/stats`; default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationValue>,
}

impl StatsSettings {
    fn is_unset(&self) -> bool {
        self.window.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// `/stats`

/// `GET /stats[?window=30s]`: one router pod's per-target counters. Several router pods each
/// answer for their own traffic; a reader adds requests and errors up across pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub window_seconds: f64,
    pub config: ConfigStatus,
    /// Served name → its targets, in config order.
    #[serde(default)]
    pub routes: IndexMap<String, RouteStats>,
}

/// Which config file the router runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// Hex SHA-256 of the config file's bytes as loaded.
    pub sha256: String,
    /// 1 at start, +1 per successful reload (per pod).
    pub generation: u64,
    pub loaded_at_unix_ms: u64,
    /// The last rejected reload, cleared by the next good one.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    /// Target name → numbers, in config order.
    #[serde(default)]
    pub targets: IndexMap<String, TargetStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStats {
    pub model: String,
    #[serde(default)]
    pub revision: Option<String>,
    pub weight: u32,
    /// `weight` over the route's total.
    pub share: f64,
    pub backends: Vec<String>,
    pub window: WindowStats,
    pub cumulative: CumulativeStats,
}

/// The requests that ended within the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub requests: u64,
    pub status: StatusCounts,
    pub errors: ErrorCounts,
    /// `errors.total / requests`; 0 without requests.
    pub error_rate: f64,
    pub latency_ms: LatencyMs,
}

/// Every request since the router process started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CumulativeStats {
    pub requests: u64,
    pub status: StatusCounts,
    pub errors: ErrorCounts,
    /// Connection failures retried on another URL (the request counts once).
    pub retries: u64,
}

/// Requests by the status class sent to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    #[serde(rename = "1xx")]
    pub s1xx: u64,
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
}

/// Requests that count against their target in canary analysis, by class: what the target
/// caused. The client's own mistakes (400, 401, 413, 422, 429 from the backend) are not here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// The backend answered 5xx.
    #[serde(rename = "5xx")]
    pub s5xx: u64,
    /// The backend answered 404: the model or adapter is missing on the pod. Default 0 so an
    /// operator reads routers from before this class during an upgrade.
    #[serde(rename = "404", default)]
    pub not_found: u64,
    /// No response headers within `timeouts.request` (the router answered 504).
    pub timeout: u64,
    /// No connection on either attempt (the router answered 502).
    pub connect: u64,
    /// Any other transport failure, including a stream cut mid-body.
    pub other: u64,
    /// The sum of the classes.
    pub total: u64,
}

/// Latency percentiles in milliseconds, request to end of the response body; `None` for an
/// empty window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        let counts = |ok: u64, bad: u64| StatusCounts {
            s2xx: ok,
            s4xx: 1,
            s5xx: bad,
            ..Default::default()
        };
        let errors = |n: u64| ErrorCounts {
            s5xx: n,
            not_found: 1,
            timeout: 0,
            connect: 0,
            other: 0,
            total: n + 1,
        };
        let target = |model: &str, weight: u32, share: f64| TargetStats {
            model: model.into(),
            revision: Some(format!("rev-{model}")),
            weight,
            share,
            backends: vec!["http://10.0.0.7:8000".into()],
            window: WindowStats {
                requests: 120,
                status: counts(118, 1),
                errors: errors(1),
                error_rate: 2.0 / 120.0,
                latency_ms: LatencyMs {
                    p50: Some(41.2),
                    p95: Some(180.5),
                    p99: None,
                },
            },
            cumulative: CumulativeStats {
                requests: 5000,
                status: counts(4990, 6),
                errors: errors(6),
                retries: 2,
            },
        };
        Stats {
            window_seconds: 60.0,
            config: ConfigStatus {
                sha256: "ab".repeat(32),
                generation: 2,
                loaded_at_unix_ms: 1_764_130_000_000,
                last_error: None,
            },
            routes: IndexMap::from([(
                "support-bot".to_string(),
                RouteStats {
                    // Not in name order: the order of the config file is kept.
                    targets: IndexMap::from([
                        ("stable".to_string(), target("support-v1", 90, 0.9)),
                        ("canary".to_string(), target("support-v2", 10, 0.1)),
                    ]),
                },
            )]),
        }
    }

    #[test]
    fn stats_round_trip_in_the_documented_shape() {
        let s = stats();
        let json = serde_json::to_value(&s).expect("serialize");
        let target = &json["routes"]["support-bot"]["targets"]["stable"];
        assert_eq!(target["window"]["status"]["2xx"], 118);
        assert_eq!(target["window"]["errors"]["5xx"], 1);
        assert_eq!(target["window"]["errors"]["404"], 1);
        assert_eq!(target["window"]["errors"]["total"], 2);
        assert_eq!(
            target["window"]["latency_ms"]["p99"],
            serde_json::Value::Null
        );
        assert_eq!(target["cumulative"]["retries"], 2);
        assert_eq!(json["config"]["last_error"], serde_json::Value::Null);
        let names: Vec<&String> = json["routes"]["support-bot"]["targets"]
            .as_object()
            .expect("object")
            .keys()
            .collect();
        assert_eq!(names, ["stable", "canary"]);
        let back: Stats = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, s);
    }

    #[test]
    fn stats_from_a_router_without_the_404_class_still_parse() {
        let mut json = serde_json::to_value(stats()).expect("serialize");
        let errors = &mut json["routes"]["support-bot"]["targets"]["stable"]["window"]["errors"];
        errors.as_object_mut().expect("object").remove("404");
        let back: Stats = serde_json::from_value(json).expect("deserialize");
        assert_eq!(
            back.routes["support-bot"].targets["stable"]
                .window
                .errors
                .not_found,
            0
        );
    }

    #[test]
    fn config_round_trip_and_the_shape_the_operator_writes() {
        let config = Config {
            routes: vec![Route {
                model: "support".into(),
                targets: vec![
                    Target {
                        name: Some("stable-a".into()),
                        revision: Some("a".into()),
                        backend: Backends::One("http://support-a:8000".into()),
                        model: "support-v1".into(),
                        weight: 90,
                    },
                    Target {
                        name: Some("canary-b".into()),
                        revision: Some("b".into()),
                        backend: Backends::Many(vec![
                            "http://10.0.0.7:8000".into(),
                            "http://10.0.0.8:8000".into(),
                        ]),
                        model: "support-v2".into(),
                        weight: 10,
                    },
                ],
            }],
            api_keys: Some(vec![ApiKey {
                name: "key-9f86d081".into(),
                sha256: Some("9f".repeat(32)),
                ..Default::default()
            }]),
            stats: StatsSettings {
                window: Some(Duration::from_secs(30).into()),
            },
            ..Default::default()
        };
        let json = serde_json::to_value(&config).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "routes": [{"model": "support", "targets": [
                    {"name": "stable-a", "revision": "a", "backend": "http://support-a:8000",
                     "model": "support-v1", "weight": 90},
                    {"name": "canary-b", "revision": "b",
                     "backend": ["http://10.0.0.7:8000", "http://10.0.0.8:8000"],
                     "model": "support-v2", "weight": 10}]}],
                "apiKeys": [{"name": "key-9f86d081", "sha256": "9f".repeat(32)}],
                "stats": {"window": "30s"}
            })
        );
        let back: Config = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, config);
    }

    #[test]
    fn config_rejects_unknown_fields_by_name() {
        let e = serde_json::from_str::<Config>(r#"{"routs": []}"#).expect_err("typo");
        assert!(e.to_string().contains("unknown field `routs`"), "{e}");
        let e = serde_json::from_str::<Config>(
            r#"{"routes": [{"model": "m", "targets": [{"backend": "http://x", "model": "a", "weight": 1, "wieght": 2}]}]}"#,
        )
        .expect_err("typo");
        assert!(e.to_string().contains("wieght"), "{e}");
    }

    #[test]
    fn durations_one_format() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["0s", "0", "-1s", "7", "soon", ""] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(90),
            Duration::from_secs(3600),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(
            DurationValue::Seconds(2.5).to_duration(),
            Ok(Duration::from_millis(2500))
        );
        assert!(DurationValue::Seconds(0.0).to_duration().is_err());
        assert!(DurationValue::Seconds(f64::NAN).to_duration().is_err());
    }
}
