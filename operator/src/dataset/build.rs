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
    let prepared_uri = artifacts::pvc_uri(&cfg.artifacts_claim, &output_path);
    let mut vols = PodVolumes::new(cfg, &ns, "unused", true);
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
        .add(cfg, &prepared_uri, true)
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
    let mut vols = PodVolumes::new(cfg, &ns, &v.job_name, true);
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
mod tests {
    use super::*;

    fn fixture(yaml: &str) -> Dataset {
        let mut ds: Dataset = serde_saphyr::from_str(yaml).expect("fixture parses");
        ds.metadata.generation = Some(2);
        ds.metadata.uid = Some("uid-1".into());
        ds
    }

    const QUICKSTART: &str = r#"
apiVersion: tailor.dev/v1alpha1
kind: Dataset
metadata: {name: support-chat, namespace: tailor-demo}
spec:
  source:
    configMap: {name: support-chat-data, key: support-chat.jsonl}
  format: chat
  preparation:
    dedupe: true
    redact: [email, phone]
    minExamples: 100
    split: {validation: 0.1, seed: 0}
"#;

    fn now() -> Timestamp {
        Timestamp::from_second(1_000).expect("valid")
    }

    #[test]
    fn configmap_source_builds_a_job_mounting_it() {
        let ds = fixture(QUICKSTART);
        let cfg = OperatorConfig::for_tests();
        let v = validate(&ds, &cfg, Some("abc")).expect("valid");
        assert!(v.job_name.starts_with("support-chat-prepare-"));
        assert!(
            v.prepared_uri
                .starts_with("pvc://tailor-artifacts/datasets/support-chat/")
        );
        assert_eq!(v.prepare_config["input"], "/data/source/data.jsonl");
        assert_eq!(v.prepare_config["format"], "chat");
        assert_eq!(v.prepare_config["redact"], json!(["email", "phone"]));
        assert_eq!(v.prepare_config["minExamples"], 100);
        assert_eq!(
            v.prepare_config["output"],
            format!("/artifacts/{}", v.output_path)
        );
        let job = job(&ds, &v, &cfg);
        let spec = job.spec.as_ref().expect("spec");
        let pod = spec.template.spec.as_ref().expect("pod");
        crate::pods::assert_hardened(pod);
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("tailor-trainer:test"));
        assert!(
            c.args
                .as_ref()
                .expect("args")
                .contains(&"prepare".to_string())
        );
        let vols = pod.volumes.as_ref().expect("volumes");
        let src = vols
            .iter()
            .find(|v| v.name == "source")
            .expect("source volume");
        assert_eq!(
            src.config_map.as_ref().map(|c| c.name.as_str()),
            Some("support-chat-data")
        );
        assert!(vols.iter().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|p| p.claim_name == "tailor-artifacts")
        }));
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "Dataset");
        assert_eq!(owner.controller, Some(true));
        let cm = config_map(&ds, &v);
        let cfg_json: serde_json::Value =
            serde_json::from_str(&cm.data.as_ref().expect("data")["prepare.json"]).expect("json");
        assert_eq!(cfg_json, v.prepare_config);
    }

    #[test]
    fn changed_source_or_preparation_changes_the_job() {
        let ds = fixture(QUICKSTART);
        let cfg = OperatorConfig::for_tests();
        let a = validate(&ds, &cfg, Some("abc")).expect("valid");
        assert_eq!(a, validate(&ds, &cfg, Some("abc")).expect("valid"));
        let b = validate(&ds, &cfg, Some("changed")).expect("valid");
        assert_ne!(a.job_name, b.job_name);
        let mut ds2 = ds.clone();
        ds2.spec.preparation.min_examples = 5;
        let c = validate(&ds2, &cfg, Some("abc")).expect("valid");
        assert_ne!(a.prepared_uri, c.prepared_uri);
    }

    #[test]
    fn inline_and_uri_sources() {
        let cfg = OperatorConfig::for_tests();
        let mut ds = fixture(QUICKSTART);
        ds.spec.source.config_map = None;
        ds.spec.source.inline = Some("{\"text\":\"hi\"}\n".into());
        let v = validate(&ds, &cfg, None).expect("valid");
        assert_eq!(v.prepare_config["input"], "/etc/tailor/source.jsonl");
        assert!(
            config_map(&ds, &v)
                .data
                .expect("data")
                .contains_key("source.jsonl")
        );
        ds.spec.source.inline = None;
        // From a bucket: fetched by an init container with the named Secret.
        ds.spec.source.uri = Some("s3://bucket/raw/x.jsonl".into());
        ds.spec.source.credentials_secret_ref = Some(tailor_api::LocalRef {
            name: "s3-creds".into(),
        });
        let v = validate(&ds, &cfg, None).expect("valid");
        assert_eq!(v.prepare_config["input"], "/inputs/0/x.jsonl");
        let pod = job(&ds, &v, &cfg)
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        crate::pods::assert_hardened(&pod);
        let init = pod.init_containers.clone().unwrap_or_default();
        assert_eq!(init.len(), 1);
        assert_eq!(
            init[0].args.as_deref().unwrap_or_default()[..2],
            ["s3://bucket/raw/x.jsonl", "/inputs/0"]
        );
        // A prefix is a directory of JSONL files.
        ds.spec.source.uri = Some("s3://bucket/raw/".into());
        let v = validate(&ds, &cfg, None).expect("valid");
        assert_eq!(v.prepare_config["input"], "/inputs/0");
        ds.spec.source.uri = Some("s3://bad bucket/x.jsonl".into());
        let Err(Error::InvalidSpec(e)) = validate(&ds, &cfg, None) else {
            panic!("not a bucket name");
        };
        assert!(e.starts_with("spec.source.uri: "), "{e}");
        ds.spec.source.credentials_secret_ref = None;
        ds.spec.source.uri = Some("pvc://raw-data/in/x.jsonl".into());
        let v = validate(&ds, &cfg, None).expect("valid");
        assert_eq!(v.prepare_config["input"], "/mnt/raw-data/in/x.jsonl");
        let job = job(&ds, &v, &cfg);
        let pod = job.spec.expect("spec").template.spec.expect("pod");
        assert!(pod.volumes.expect("vols").iter().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|p| p.claim_name == "raw-data")
        }));
    }

    #[test]
    fn seed_token_limit_and_tokenizer_reach_the_prepare_config() {
        let cfg = OperatorConfig::for_tests();
        let mut ds = fixture(QUICKSTART);
        ds.spec.preparation.split.seed = 7;
        ds.spec.preparation.max_tokens_per_example = 512;
        ds.spec.preparation.redact = vec![
            tailor_api::RedactKind::CreditCard,
            tailor_api::RedactKind::IpAddress,
        ];
        let v = validate(&ds, &cfg, Some("abc")).expect("valid");
        assert_eq!(v.prepare_config["seed"], 7);
        assert_eq!(v.prepare_config["maxTokensPerExample"], 512);
        assert_eq!(
            v.prepare_config["redact"],
            json!(["creditCard", "ipAddress"])
        );
        assert!(v.prepare_config.get("tokenizer").is_none());
        // spec.preparation.tokenizer is mounted and passed on; it changes the preparation.
        ds.spec.preparation.tokenizer = Some("pvc://models/llama/base".into());
        let t = validate(&ds, &cfg, Some("abc")).expect("valid");
        assert_eq!(t.prepare_config["tokenizer"], "/mnt/models/llama/base");
        assert_ne!(t.job_name, v.job_name);
        assert_ne!(t.prepared_uri, v.prepared_uri);
        let pod = job(&ds, &t, &cfg)
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        let claim = pod
            .volumes
            .expect("vols")
            .into_iter()
            .find_map(|v| {
                v.persistent_volume_claim
                    .filter(|p| p.claim_name == "models")
            })
            .expect("the tokenizer's claim is mounted");
        assert_eq!(claim.read_only, Some(true));
        // Another tokenizer prepares again.
        ds.spec.preparation.tokenizer = Some("pvc://models/mistral".into());
        let m = validate(&ds, &cfg, Some("abc")).expect("valid");
        assert_ne!(m.job_name, t.job_name);
        // Its tokenizer.json: the directory is what the prepare command reads.
        ds.spec.preparation.tokenizer = Some("pvc://models/llama/base/tokenizer.json".into());
        let f = validate(&ds, &cfg, Some("abc")).expect("valid");
        assert_eq!(f.prepare_config["tokenizer"], "/mnt/models/llama/base");
        ds.spec.preparation.tokenizer = Some("s3://bucket/model".into());
        let err = validate(&ds, &cfg, Some("abc")).expect_err("object stores cannot be mounted");
        assert_eq!(err.category(), Category::InvalidSpec);
        assert!(
            err.to_string().contains("spec.preparation.tokenizer"),
            "{err}"
        );
    }

    #[test]
    fn tokenizer_uris_resolve_to_a_mountable_directory() {
        for (uri, want) in [
            ("pvc://models/llama", "pvc://models/llama"),
            ("pvc://models/llama/", "pvc://models/llama"),
            ("pvc://models/llama/tokenizer.json", "pvc://models/llama"),
            ("pvc://models/tokenizer.json", "pvc://models/"),
            (
                "pvc://models/my-tokenizer.json",
                "pvc://models/my-tokenizer.json",
            ),
            ("file:///models/llama", "file:///models/llama"),
            (
                "file:///models/llama/tokenizer.json",
                "file:///models/llama",
            ),
            ("file:///tokenizer.json", "file:///"),
        ] {
            assert_eq!(tokenizer_dir(uri).expect(uri), want, "{uri}");
        }
        for bad in [
            "gs://b/m",
            "hf://meta/llama",
            "models/llama",
            "file://rel/path",
        ] {
            assert_eq!(
                tokenizer_dir(bad).expect_err(bad).category(),
                Category::InvalidSpec,
                "{bad}"
            );
        }
        // A file:// tokenizer.json mounts its directory (read-only) into the pod, where the
        // admin allows node paths at all.
        let mut cfg = OperatorConfig::for_tests();
        let mut ds = fixture(QUICKSTART);
        ds.spec.preparation.tokenizer = Some("file:///srv/models/base/tokenizer.json".into());
        let err = validate(&ds, &cfg, Some("abc")).expect_err("file:// is off by default");
        assert!(err.to_string().contains("allowFileUris"), "{err}");
        cfg.allow_file_uris = true;
        let v = validate(&ds, &cfg, Some("abc")).expect("valid");
        assert_eq!(v.prepare_config["tokenizer"], "/srv/models/base");
        let pod = job(&ds, &v, &cfg)
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        let host = pod
            .volumes
            .expect("vols")
            .into_iter()
            .find_map(|v| v.host_path)
            .expect("hostPath volume");
        assert_eq!(host.path, "/srv/models/base");
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .find(|m| m.mount_path == "/srv/models/base")
            .cloned()
            .expect("mounted at its own path");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn two_sources_are_invalid() {
        let cfg = OperatorConfig::for_tests();
        let mut ds = fixture(QUICKSTART);
        ds.spec.source.inline = Some("x".into());
        let err = validate(&ds, &cfg, None).expect_err("invalid");
        assert_eq!(err.category(), Category::InvalidSpec);
    }

    #[test]
    fn prepared_summary_becomes_ready_status() {
        let ds = fixture(QUICKSTART);
        let cfg = OperatorConfig::for_tests();
        let v = validate(&ds, &cfg, Some("abc")).expect("valid");
        let summary: Summary = serde_json::from_str(
            r#"{"status":"Succeeded","examples":200,"invalid":2,"duplicatesRemoved":4,"redactions":7,"train":181,"validation":19,"test":0,"contentHash":"ff00","invalidSamples":[{"line":17,"reason":"not JSON"},{"line":90,"reason":"no assistant message"}]}"#,
        )
        .expect("summary");
        let st = status(&ds, Some(&v), &Observation::Prepared(summary), now());
        assert_eq!(st.phase, DatasetPhase::Ready);
        assert_eq!(st.observed_generation, Some(2));
        let stats = st.stats.expect("stats");
        assert_eq!(
            (
                stats.examples,
                stats.invalid,
                stats.duplicates_removed,
                stats.redactions
            ),
            (200, 2, 4, 7)
        );
        assert_eq!(st.content_hash.as_deref(), Some("ff00"));
        assert_eq!(st.prepared_uri.as_deref(), Some(v.prepared_uri.as_str()));
        assert_eq!(st.invalid_samples.len(), 2);
        assert!(conditions::is_true(&st.conditions, READY));
        assert!(!conditions::is_true(&st.conditions, PROGRESSING));
        assert_eq!(
            conditions::get(&st.conditions, READY)
                .expect("ready")
                .observed_generation,
            Some(2)
        );
    }

    #[test]
    fn failure_and_blocked_states() {
        let ds = fixture(QUICKSTART);
        let st = status(
            &ds,
            None,
            &Observation::Failed {
                message: "only 3 valid examples".into(),
                stats: None,
            },
            now(),
        );
        assert_eq!(st.phase, DatasetPhase::Failed);
        assert!(conditions::is_true(&st.conditions, DEGRADED));
        assert_eq!(
            conditions::get(&st.conditions, READY).expect("c").reason,
            "JobFailed"
        );
        assert_eq!(
            failure_message(Some(
                r#"{"status":"Failed","message":"only 3 valid examples"}"#
            ))
            .as_deref(),
            Some("only 3 valid examples")
        );
        let st = status(
            &ds,
            None,
            &Observation::Blocked {
                category: Category::SourceNotFound,
                message: "configmap x not found".into(),
            },
            now(),
        );
        assert_eq!(st.phase, DatasetPhase::Pending);
        assert_eq!(
            conditions::get(&st.conditions, READY).expect("c").reason,
            "SourceNotFound"
        );
    }
}
