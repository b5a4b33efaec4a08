//! Pure part of the Dataset pipeline: validate the spec, build the prepare Job and its config
//! ConfigMap, and compute the status from what was observed.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, KeyToPath, PodSpec, PodTemplateSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tailor_api::conditions::{self, DEGRADED, PROGRESSING, READY};
use tailor_api::{Dataset, DatasetPhase, DatasetStats, DatasetStatus, InvalidSample};

use crate::artifacts::{self, Location};
use crate::config::OperatorConfig;
use crate::error::{Category, Error, truncate};
use crate::jobs::{self, CONFIG_DIR, JOB_LABEL, PodState, PodVolumes, SPEC_HASH, TERMINATION_PATH};

/// Label on the prepare Job and ConfigMap naming their Dataset.
pub const DATASET_LABEL: &str = "tailor.dev/dataset";
/// How many invalid lines status shows.
pub const MAX_INVALID_SAMPLES: usize = 10;
/// The most of one reason status keeps: reasons quote the data, which a tenant controls.
pub const MAX_REASON_BYTES: usize = 300;

/// The invalid lines status shows: the first few, each reason cut with a marker.
fn bounded_samples(samples: &[tailor_wire::prepare::InvalidSample]) -> Vec<InvalidSample> {
    samples
        .iter()
        .take(MAX_INVALID_SAMPLES)
        .map(|s| InvalidSample {
            line: s.line,
            reason: truncate(&s.reason, MAX_REASON_BYTES),
        })
        .collect()
}

/// Where the prepare pod reads the raw JSONL from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    ConfigMap {
        name: String,
        key: String,
    },
    /// An artifact URI, the spec field it came from, and the Secret a fetch of it uses.
    Uri {
        uri: String,
        field: &'static str,
        credentials: Option<String>,
    },
    Inline(String),
}

/// A Dataset spec checked and resolved into what the prepare Job needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Hash of the source and preparation settings: a change prepares again.
    pub hash: String,
    pub job_name: String,
    /// Path of the prepared splits on the artifact claim.
    pub output_path: String,
    pub prepared_uri: String,
    pub input: Input,
    /// A model directory (URI) whose tokenizer counts tokens and enforces maxTokensPerExample.
    pub tokenizer: Option<String>,
    pub prepare_config: serde_json::Value,
}

/// Checks the spec. `source_fingerprint` identifies the current content of a ConfigMap source
/// (so an edited ConfigMap prepares again).
pub fn validate(
    ds: &Dataset,
    cfg: &OperatorConfig,
    source_fingerprint: Option<&str>,
) -> Result<Validated, Error> {
    crate::pods::check_template("spec.podTemplate", ds.spec.pod_template.as_ref())
        .map_err(Error::InvalidSpec)?;
    let src = &ds.spec.source;
    let set = [
        src.config_map.is_some(),
        src.pvc.is_some(),
        src.uri.is_some(),
        src.inline.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        return Err(Error::InvalidSpec(
            "spec.source: exactly one of configMap, pvc, uri or inline must be set".into(),
        ));
    }
    let input = if let Some(cm) = &src.config_map {
        Input::ConfigMap {
            name: cm.name.clone(),
            key: cm.key.clone(),
        }
    } else if let Some(p) = &src.pvc {
        Input::Uri {
            uri: artifacts::pvc_uri(&p.claim_name, &p.path),
            field: "spec.source.pvc",
            credentials: None,
        }
    } else if let Some(uri) = &src.uri {
        Input::Uri {
            uri: uri.clone(),
            field: "spec.source.uri",
            credentials: src.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
        }
    } else {
        Input::Inline(src.inline.clone().unwrap_or_default())
    };
    let prep = &ds.spec.preparation;
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let tokenizer = prep.tokenizer.as_deref().map(tokenizer_dir).transpose()?;
    // `preparation` includes the tokenizer: another tokenizer prepares again.
    let identity = json!({
        "source": src,
        "format": ds.spec.format,
        "preparation": prep,
        "sourceContent": source_fingerprint,
    });
    let hash = jobs::hash_json(&identity)[..16].to_string();
    let output_path = format!("datasets/{name}/{hash}");
    let prepared_uri = crate::stored::output_uri(cfg, &ns, &output_path);
    let mut vols = PodVolumes::new(&ns, "unused", true);
    let input_path = match &input {
        Input::ConfigMap { .. } => format!("{SOURCE_DIR}/data.jsonl"),
        Input::Inline(_) => format!("{CONFIG_DIR}/{INLINE_KEY}"),
        Input::Uri {
            uri,
            field,
            credentials,
        } => vols
            .input(cfg, uri, is_prefix(uri), credentials.as_deref())
            .map_err(|e| Error::InvalidSpec(format!("{field}: {e}")))?
            .to_string_lossy()
            .into_owned(),
    };
    let tokenizer_path = match &tokenizer {
        Some(uri) => Some(
            vols.add(cfg, uri, true)
                .map_err(|e| Error::InvalidSpec(format!("spec.preparation.tokenizer: {e}")))?,
        ),
        None => None,
    };
    let output = vols
        .own(cfg, &prepared_uri, true)
        .map_err(Error::InvalidSpec)?;
    let prepare_config = serde_json::to_value(PrepareConfig {
        input: input_path.into(),
        format: ds.spec.format,
        output,
        dedupe: prep.dedupe,
        redact: prep.redact.clone(),
        validation_fraction: prep.split.validation,
        test_fraction: prep.split.test,
        seed: prep.split.seed,
        min_examples: prep.min_examples as usize,
        max_tokens_per_example: Some(prep.max_tokens_per_example as usize),
        tokenizer: tokenizer_path,
    })
    .unwrap_or_default();
    Ok(Validated {
        job_name: jobs::child_name(&name, &format!("prepare-{}", &hash[..8])),
        hash,
        output_path,
        prepared_uri,
        input,
        tokenizer,
        prepare_config,
    })
}

/// The directory whose tokenizer `spec.preparation.tokenizer` names: the URI itself, or the
/// directory of a `.../tokenizer.json` (the prepare command reads `<dir>/tokenizer.json` and,
/// when present, `<dir>/tokenizer_config.json`).
pub fn tokenizer_dir(uri: &str) -> Result<String, Error> {
    let field = "spec.preparation.tokenizer";
    let loc = artifacts::parse(uri).map_err(|e| Error::InvalidSpec(format!("{field}: {e}")))?;
    let strip = |p: &str| -> Option<String> {
        p.strip_suffix("tokenizer.json")
            .filter(|d| d.is_empty() || d.ends_with('/'))
            .map(|d| d.trim_end_matches('/').to_string())
    };
    match loc {
        Location::Remote(_) => Err(Error::InvalidSpec(format!(
            "{field}: {uri} cannot be mounted into the prepare pod; use pvc:// or file://"
        ))),
        Location::Pvc { claim, path } => {
            Ok(artifacts::pvc_uri(&claim, &strip(&path).unwrap_or(path)))
        }
        Location::File(p) => {
            let p = p.to_string_lossy().into_owned();
            let dir = match strip(&p) {
                Some(d) if d.is_empty() => "/".to_string(),
                Some(d) => d,
                None => p,
            };
            Ok(format!("file://{dir}"))
        }
    }
}

/// Whether a source URI names a prefix of JSONL files (it ends in `/`) rather than one file.
fn is_prefix(uri: &str) -> bool {
    uri.ends_with('/')
}

const SOURCE_DIR: &str = "/data/source";
const CONFIG_KEY: &str = "prepare.json";
const INLINE_KEY: &str = "source.jsonl";

fn meta(ds: &Dataset, name: &str, hash: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ds.namespace(),
        labels: Some(jobs::managed_labels(DATASET_LABEL, &ds.name_any())),
        annotations: Some(BTreeMap::from([(SPEC_HASH.to_string(), hash.to_string())])),
        owner_references: ds.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The prepare pod's mounted config (and the inline source, if any). Owned by the Dataset.
pub fn config_map(ds: &Dataset, v: &Validated) -> ConfigMap {
    let mut data = BTreeMap::from([(
        CONFIG_KEY.to_string(),
        serde_json::to_string_pretty(&v.prepare_config).unwrap_or_default(),
    )]);
    if let Input::Inline(s) = &v.input {
        data.insert(INLINE_KEY.to_string(), s.clone());
    }
    ConfigMap {
        metadata: meta(ds, &v.job_name, &v.hash),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The prepare Job. Owned by the Dataset, so deleting it cascades.
pub fn job(ds: &Dataset, v: &Validated, cfg: &OperatorConfig) -> Job {
    let ns = ds.namespace().unwrap_or_default();
    let mut vols = PodVolumes::new(&ns, &v.job_name, true);
    match &v.input {
        Input::ConfigMap { name, key } => {
            vols.volumes.push(Volume {
                name: "source".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    items: Some(vec![KeyToPath {
                        key: key.clone(),
                        path: "data.jsonl".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            vols.mounts.push(VolumeMount {
                name: "source".into(),
                mount_path: SOURCE_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        // Validated: these resolve.
        Input::Uri {
            uri, credentials, ..
        } => {
            let _ = vols.input(cfg, uri, is_prefix(uri), credentials.as_deref());
        }
        Input::Inline(_) => {}
    }
    if let Some(uri) = &v.tokenizer {
        let _ = vols.add(cfg, uri, true);
    }
    // Validated: it resolves.
    let _ = vols.own(cfg, &v.prepared_uri, true);
    let mut labels = jobs::managed_labels(DATASET_LABEL, &ds.name_any());
    labels.insert(JOB_LABEL.into(), v.job_name.clone());
    let mut job = Job {
        metadata: meta(ds, &v.job_name, &v.hash),
        spec: Some(JobSpec {
            // Preparation is deterministic: a retry helps only against a lost node.
            backoff_limit: Some(1),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(crate::pods::finish(
                    PodSpec {
                        restart_policy: Some("Never".into()),
                        containers: vec![Container {
                            name: "prepare".into(),
                            image: Some(cfg.trainer_image.clone()),
                            args: Some(
                                [
                                    "--log-format",
                                    "json",
                                    "prepare",
                                    "--config",
                                    &format!("{CONFIG_DIR}/{CONFIG_KEY}"),
                                    "--termination-message-path",
                                    TERMINATION_PATH,
                                ]
                                .map(String::from)
                                .to_vec(),
                            ),
                            termination_message_path: Some(TERMINATION_PATH.into()),
                            env_from: vols.store_env(),
                            volume_mounts: Some(vols.mounts),
                            ..Container::default()
                        }],
                        volumes: Some(vols.volumes),
                        init_containers: (!vols.fetches.is_empty()).then_some(vols.fetches),
                        ..PodSpec::default()
                    },
                    &cfg.default_resources,
                )),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    if let Some(spec) = job.spec.as_mut() {
        crate::pods::customize(&mut spec.template, ds.spec.pod_template.as_ref());
    }
    jobs::queue_for_kueue(&mut job, jobs::kueue_queue(&ds.metadata));
    job
}

use tailor_wire::prepare::PrepareConfig;
/// `stats.json` / the prepare pod's termination message.
pub use tailor_wire::prepare::PrepareStats as Summary;

/// What the I/O steps found.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The spec cannot be prepared (or its source is missing).
    Blocked {
        category: Category,
        message: String,
    },
    /// The prepare Job runs (or waits for its pod).
    Preparing {
        pod: Option<PodState>,
        /// The Kueue queue the prepare Job waits in, until admitted.
        awaiting_admission: Option<String>,
    },
    Prepared(Summary),
    Failed {
        message: String,
        stats: Option<Summary>,
    },
}

/// The failure message of a prepare pod's termination message (`{status: "Failed", message}`).
pub fn failure_message(termination: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(termination?).ok()?;
    v["message"].as_str().map(String::from)
}

fn stats_of(s: &Summary) -> DatasetStats {
    DatasetStats {
        examples: s.examples,
        invalid: s.invalid,
        duplicates_removed: s.duplicates_removed,
        redactions: s.redactions,
        train: s.train,
        validation: s.validation,
        test: s.test,
        tokens: s.tokens,
    }
}

/// The whole new status.
pub fn status(
    ds: &Dataset,
    v: Option<&Validated>,
    obs: &Observation,
    now: Timestamp,
) -> DatasetStatus {
    let prev = ds.status.clone().unwrap_or_default();
    let generation = ds.metadata.generation;
    let mut st = DatasetStatus {
        observed_generation: generation,
        job_name: v.map(|v| v.job_name.clone()).or(prev.job_name.clone()),
        ..prev.clone()
    };
    let mut conds = prev.conditions.clone();
    let mut set = |t: &str, s: bool, reason: &str, msg: &str| {
        conditions::set(
            &mut conds,
            conditions::new(t, Some(s), reason, msg, generation),
            now,
        );
    };
    match obs {
        Observation::Blocked { category, message } => {
            st.phase = if *category == Category::InvalidSpec {
                DatasetPhase::Failed
            } else {
                DatasetPhase::Pending
            };
            set(READY, false, category.as_str(), message);
            set(PROGRESSING, false, category.as_str(), message);
            set(
                DEGRADED,
                *category == Category::InvalidSpec,
                category.as_str(),
                message,
            );
        }
        Observation::Preparing {
            pod,
            awaiting_admission,
        } => {
            st.phase = DatasetPhase::Preparing;
            let msg = match (pod, awaiting_admission) {
                (_, Some(q)) => format!("waiting for Kueue admission (queue {q:?})"),
                (Some(p), None) => format!("prepare pod {} is {}", p.name, p.phase),
                (None, None) => "waiting for the prepare pod".into(),
            };
            set(READY, false, "Preparing", &msg);
            set(PROGRESSING, true, "Preparing", &msg);
            set(DEGRADED, false, "AsExpected", "");
        }
        Observation::Prepared(s) => {
            st.phase = DatasetPhase::Ready;
            st.stats = Some(stats_of(s));
            st.content_hash = Some(s.content_hash.clone());
            st.prepared_uri = v.map(|v| v.prepared_uri.clone());
            st.invalid_samples = bounded_samples(&s.invalid_samples);
            let msg = format!(
                "{} examples ({} train, {} validation, {} test); {} invalid lines, {} duplicates removed, {} redactions",
                s.examples,
                s.train,
                s.validation,
                s.test,
                s.invalid,
                s.duplicates_removed,
                s.redactions
            );
            set(READY, true, "Prepared", &msg);
            set(PROGRESSING, false, "Prepared", &msg);
            set(DEGRADED, false, "AsExpected", "");
        }
        Observation::Failed { message, stats } => {
            st.phase = DatasetPhase::Failed;
            if let Some(s) = stats {
                st.stats = Some(stats_of(s));
                st.invalid_samples = bounded_samples(&s.invalid_samples);
            }
            st.content_hash = None;
            st.prepared_uri = None;
            let reason = Category::JobFailed.as_str();
            set(READY, false, reason, message);
            set(PROGRESSING, false, reason, message);
            set(DEGRADED, true, reason, message);
        }
    }
    st.conditions = conds;
    st
}

#[cfg(test)]
mod tests;
