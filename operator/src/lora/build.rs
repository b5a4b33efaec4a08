//! Pure part of the LoraAdapter pipeline: checking an adapter artifact against its declaration,
//! and the status that results.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tailor_api::conditions::{self, DEGRADED, READY};
use tailor_api::{Lineage, LoraAdapter, LoraAdapterPhase, LoraAdapterStatus, Verification};

use crate::artifacts;
use crate::error::{Category, truncate};

/// Longest message status keeps (adapter_config.json values are echoed into it).
const MESSAGE_MAX: usize = 1000;

/// What was found at the artifact's location.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub sha256: String,
    pub size_bytes: u64,
    /// `adapter_config.json`, parsed.
    pub adapter_config: Value,
}

/// Checks a found artifact against the spec (and a digest recorded earlier). `Err` lists every
/// mismatch.
pub fn verify(la: &LoraAdapter, found: &Found) -> Result<String, String> {
    let spec = &la.spec;
    let mut problems = vec![];
    let expected_sha = spec.sha256.clone().or_else(|| {
        la.status
            .as_ref()
            .and_then(|s| s.verification.as_ref())
            .filter(|v| v.verified)
            .and_then(|v| v.sha256.clone())
    });
    if let Some(want) = &expected_sha
        && *want != found.sha256
    {
        problems.push(format!(
            "adapter_model.safetensors has sha256 {}, expected {want}",
            found.sha256
        ));
    }
    if let Some(want) = spec.size_bytes
        && want != found.size_bytes
    {
        problems.push(format!(
            "adapter_model.safetensors is {} bytes, expected {want}",
            found.size_bytes
        ));
    }
    let c = &found.adapter_config;
    match c["r"].as_u64() {
        Some(r) if r == u64::from(spec.rank) => {}
        Some(r) => problems.push(format!(
            "adapter_config.json has r={r}, spec.rank is {}",
            spec.rank
        )),
        None => problems.push("adapter_config.json has no rank (r)".into()),
    }
    match c["lora_alpha"].as_f64() {
        Some(a) if (a - spec.alpha).abs() < 1e-6 => {}
        Some(a) => problems.push(format!(
            "adapter_config.json has lora_alpha={a}, spec.alpha is {}",
            spec.alpha
        )),
        None => problems.push("adapter_config.json has no lora_alpha".into()),
    }
    if !spec.target_modules.is_empty() {
        let mut got: Vec<String> = match &c["target_modules"] {
            Value::Array(xs) => xs
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => vec![],
        };
        let mut want = spec.target_modules.clone();
        got.sort();
        got.dedup();
        want.sort();
        want.dedup();
        if got != want {
            problems.push(format!(
                "adapter_config.json targets {got:?}, spec.targetModules is {want:?}"
            ));
        }
    }
    match c["base_model_name_or_path"].as_str() {
        Some(b) if artifacts::same_base(&spec.base_model.uri, b) => {}
        Some(b) => problems.push(format!(
            "adapter_config.json was trained on {b:?}, spec.baseModel.uri is {}",
            spec.base_model.uri
        )),
        None => problems.push("adapter_config.json names no base_model_name_or_path".into()),
    }
    if problems.is_empty() {
        Ok(format!(
            "sha256 {}, {} bytes, rank {}, alpha {}, base model match",
            found.sha256, found.size_bytes, spec.rank, spec.alpha
        ))
    } else {
        Err(format!("{}: {}", spec.uri, problems.join("; ")))
    }
}

/// Result of the verify step.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Verified {
        found: Found,
        message: String,
    },
    Mismatch {
        found: Option<Found>,
        message: String,
    },
    /// The artifact could not be read (yet): not a verdict.
    Unavailable(String),
}

pub fn status(
    la: &LoraAdapter,
    outcome: &Outcome,
    lineage: Option<Lineage>,
    produced_by: Option<String>,
    now: Timestamp,
) -> LoraAdapterStatus {
    let prev = la.status.clone().unwrap_or_default();
    let generation = la.metadata.generation;
    // Once observed, lineage and ownership stay: they outlive the job (the URI is immutable).
    let mut st = LoraAdapterStatus {
        observed_generation: generation,
        lineage: lineage.or(prev.lineage.clone()),
        produced_by: produced_by.or(prev.produced_by.clone()),
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
    let short;
    let outcome = match outcome {
        Outcome::Mismatch { found, message } => {
            short = Outcome::Mismatch {
                found: found.clone(),
                message: truncate(message, MESSAGE_MAX),
            };
            &short
        }
        Outcome::Unavailable(m) => {
            short = Outcome::Unavailable(truncate(m, MESSAGE_MAX));
            &short
        }
        o => o,
    };
    match outcome {
        Outcome::Verified { found, message } => {
            st.phase = LoraAdapterPhase::Ready;
            st.verification = Some(Verification {
                verified: true,
                sha256: Some(found.sha256.clone()),
                size_bytes: Some(found.size_bytes),
                message: message.clone(),
                checked_at: Some(Time(now)),
            });
            set(READY, true, "Verified", message);
            set(DEGRADED, false, "AsExpected", "");
        }
        Outcome::Mismatch { found, message } => {
            st.phase = LoraAdapterPhase::Failed;
            st.verification = Some(Verification {
                verified: false,
                sha256: found.as_ref().map(|f| f.sha256.clone()),
                size_bytes: found.as_ref().map(|f| f.size_bytes),
                message: truncate(message, MESSAGE_MAX),
                checked_at: Some(Time(now)),
            });
            let r = Category::VerificationFailed.as_str();
            set(READY, false, r, message);
            set(DEGRADED, true, r, message);
        }
        Outcome::Unavailable(message) => {
            if st.phase != LoraAdapterPhase::Ready {
                st.phase = LoraAdapterPhase::Pending;
            }
            let r = Category::ArtifactUnavailable.as_str();
            set(READY, false, r, message);
            set(DEGRADED, true, r, message);
        }
    }
    st.conditions = conds;
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn adapter() -> LoraAdapter {
        let mut la: LoraAdapter = serde_saphyr::from_str(
            r#"
apiVersion: tailor.dev/v1alpha1
kind: LoraAdapter
metadata: {name: support-v1, namespace: tailor-demo}
spec:
  baseModel: {uri: pvc://tailor-artifacts/models/base}
  uri: pvc://tailor-artifacts/finetune/support-v1-abcd
  rank: 8
  alpha: 16
  targetModules: [q_proj, v_proj]
  sha256: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
  sizeBytes: 100
"#,
        )
        .expect("fixture");
        la.metadata.generation = Some(1);
        la
    }

    fn found() -> Found {
        Found {
            sha256: "a".repeat(64),
            size_bytes: 100,
            adapter_config: json!({"r": 8, "lora_alpha": 16.0, "target_modules": ["v_proj", "q_proj"], "base_model_name_or_path": "/artifacts/models/base", "peft_type": "LORA"}),
        }
    }

    #[test]
    fn matching_artifact_verifies() {
        let la = adapter();
        let msg = verify(&la, &found()).expect("verified");
        let st = status(
            &la,
            &Outcome::Verified {
                found: found(),
                message: msg,
            },
            None,
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(st.phase, LoraAdapterPhase::Ready);
        assert!(conditions::is_true(&st.conditions, READY));
        assert_eq!(st.verification.expect("v").sha256, Some("a".repeat(64)));
    }

    #[test]
    fn every_mismatch_is_reported() {
        let la = adapter();
        let mut f = found();
        f.sha256 = "b".repeat(64);
        f.adapter_config = json!({"r": 4, "lora_alpha": 16, "target_modules": "q_proj", "base_model_name_or_path": "/artifacts/models/other"});
        let err = verify(&la, &f).expect_err("mismatch");
        for needle in ["sha256", "r=4", "targets", "trained on"] {
            assert!(err.contains(needle), "{needle} in {err}");
        }
        let st = status(
            &la,
            &Outcome::Mismatch {
                found: Some(f),
                message: err,
            },
            None,
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(st.phase, LoraAdapterPhase::Failed);
        assert_eq!(
            conditions::get(&st.conditions, READY).expect("c").reason,
            "VerificationFailed"
        );
    }

    #[test]
    fn imported_adapter_without_digest_pins_the_first_one() {
        let mut la = adapter();
        la.spec.sha256 = None;
        la.spec.size_bytes = None;
        let msg = verify(&la, &found()).expect("verified");
        la.status = Some(status(
            &la,
            &Outcome::Verified {
                found: found(),
                message: msg,
            },
            None,
            None,
            Timestamp::UNIX_EPOCH,
        ));
        let mut changed = found();
        changed.sha256 = "c".repeat(64);
        assert!(verify(&la, &changed).is_err());
    }

    #[test]
    fn unavailable_artifact_is_pending_not_failed() {
        let la = adapter();
        let st = status(
            &la,
            &Outcome::Unavailable("no such file".into()),
            None,
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(st.phase, LoraAdapterPhase::Pending);
        assert_eq!(
            conditions::get(&st.conditions, READY).expect("c").reason,
            "ArtifactUnavailable"
        );
    }
}
