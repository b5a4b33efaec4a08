//! tailor-server's contracts: the JSON config file the operator writes (`--config`), the adapter
//! APIs the operator calls — vLLM's runtime LoRA API (`POST /v1/load_lora_adapter`,
//! `POST /v1/unload_lora_adapter`) and the deprecated `/admin/adapters` — the model listing
//! (`GET /v1/models`, shaped as vLLM's) and the error body every endpoint answers with.
//!
//! The JSON shapes are the ones vLLM and OpenAI use, so the same client code talks to
//! tailor-server and to vLLM.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// ------------------------------------------------------------------------------ config file

/// tailor-server's `--config` file (JSON), re-read by the server when it changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// The name clients use for the base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model_name: Option<String>,
    /// Adapter name → PEFT adapter directory (a relative path is relative to the config file's
    /// directory).
    #[serde(default)]
    pub adapters: BTreeMap<String, String>,
    /// Adapters held in memory at once (least recently used ones are unloaded beyond it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_loaded_adapters: Option<usize>,
    /// TEST-ONLY fault injection; only test setups write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_injection: Option<FaultInjection>,
}

/// TEST-ONLY fault injection: makes a server fail on purpose, so tests can watch canary
/// analysis roll back and the engine's death be noticed. Never set in production.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultInjection {
    /// Fraction (0..=1) of requests to `adapters` answered with a 500 before generation.
    #[serde(default)]
    pub error_rate: f64,
    /// Model names `error_rate` applies to; empty: every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<String>,
    /// The engine thread panics at this decode step (counted from the server's start), as a
    /// failing libtorch op would: the server stays up with a dead engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_panic_at_step: Option<u64>,
    /// Non-streamed chat completions to the models in `adapters` (all when empty) are answered
    /// with these contents in turn, without generating: a judge whose verdicts a test fixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixed_responses: Vec<String>,
}

impl FaultInjection {
    /// Whether requests to `model` are subject to `error_rate`.
    pub fn applies(&self, model: &str) -> bool {
        self.error_rate > 0.0 && self.targets(model)
    }

    /// Whether `model` is one of `adapters` (every model when that list is empty).
    pub fn targets(&self, model: &str) -> bool {
        self.adapters.is_empty() || self.adapters.iter().any(|a| a == model)
    }
}

// ------------------------------------------------------------------------------ vLLM LoRA API

/// `POST /v1/load_lora_adapter` (vLLM's body). A missing field reads as empty, which the server
/// answers with vLLM's 400.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadLoraAdapterRequest {
    #[serde(default)]
    pub lora_name: String,
    /// The adapter directory, as the server sees it, or (tailor-server) a URI under one of its
    /// `--adapter-uri-prefix`es: `s3://`, `gs://`, `az://`, `https://`, `hf://`.
    #[serde(default)]
    pub lora_path: String,
    /// Replace an adapter already loaded under `lora_name` (without it, that is a 400).
    #[serde(default)]
    pub load_inplace: bool,
    /// tailor's extension: the sha256 `adapter_model.safetensors` must have (a LoraAdapter's
    /// `spec.sha256`); a mismatch refuses the load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `POST /v1/unload_lora_adapter` (vLLM's body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadLoraAdapterRequest {
    #[serde(default)]
    pub lora_name: String,
    /// Accepted for vLLM compatibility; adapters are named by `lora_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_int_id: Option<i64>,
}

/// The ranks vLLM's `--max-lora-rank` accepts (`MaxLoRARanks` in vllm/config/lora.py).
pub const VLLM_LORA_RANKS: [u32; 9] = [1, 8, 16, 32, 64, 128, 256, 320, 512];

/// The plain-text body of a successful load (status 200), in vLLM's words.
pub fn lora_loaded_message(name: &str) -> String {
    format!("Success: LoRA adapter '{name}' added successfully.")
}

/// The plain-text body of a successful unload (status 200), in vLLM's words.
pub fn lora_unloaded_message(name: &str) -> String {
    format!("Success: LoRA adapter '{name}' removed successfully.")
}

// ------------------------------------------------------------------------------ model listing

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// One served model: the base model (`parent` null) or a LoRA adapter (`parent` = the base
/// model's served name, `root` = the adapter's directory), as vLLM lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    pub owned_by: String,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default)]
    pub parent: Option<String>,
    /// The context limit (base model only, as vLLM).
    #[serde(default)]
    pub max_model_len: Option<u64>,
}

impl ModelList {
    /// The adapters listed (entries with a parent), by name.
    pub fn adapters(&self) -> impl Iterator<Item = &ModelCard> {
        self.data.iter().filter(|m| m.parent.is_some())
    }
}

// ------------------------------------------------------------------------------ errors

/// Every error body: OpenAI's `{"error": {message, type, param, code}}`. OpenAI endpoints put a
/// string `code` (`model_not_found`); the vLLM LoRA API puts the HTTP status number there, as
/// vLLM does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<ErrorCode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    /// vLLM: the HTTP status.
    Status(u16),
    /// OpenAI: a machine-readable name.
    Name(String),
}

// ------------------------------------------------------------------------------ deprecated admin API

/// One entry of `GET /admin/adapters` (deprecated: use `/v1/models` and the LoRA API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterStatus {
    pub name: String,
    pub path: String,
    /// Held in memory now (an unloaded adapter is loaded again on its next request).
    pub loaded: bool,
    /// The last load error, if the last load failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /admin/adapters` body (deprecated: use `POST /v1/load_lora_adapter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddAdapterRequest {
    pub name: String,
    pub path: String,
}

/// `POST /admin/adapters` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddAdapterResponse {
    pub name: String,
    pub path: String,
    pub loaded: bool,
}

/// `DELETE /admin/adapters/NAME` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAdapterResponse {
    pub name: String,
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;

    /// `value` read as `T` and written back is `value` again, and `T` survives the trip.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: Value,
    ) -> T {
        let typed: T = serde_json::from_value(value.clone()).expect("reads");
        assert_eq!(serde_json::to_value(&typed).expect("writes"), value);
        let again: T = serde_json::from_value(serde_json::to_value(&typed).expect("writes"))
            .expect("reads back");
        assert_eq!(again, typed);
        typed
    }

    #[test]
    fn server_config_keeps_the_operators_json_shape() {
        let c: ServerConfig = round_trip(json!({
            "servedModelName": "base",
            "adapters": {"v1": "/artifacts/v1", "v2": "/artifacts/v2"},
            "maxLoadedAdapters": 8,
            "faultInjection": {"errorRate": 0.3, "adapters": ["v2"], "enginePanicAtStep": 40},
        }));
        assert_eq!(c.adapters["v2"], "/artifacts/v2");
        let f = c.fault_injection.expect("fault injection");
        assert!(f.applies("v2") && !f.applies("v1"));
        assert_eq!(f.engine_panic_at_step, Some(40));
        // Without the optional parts, nothing else is written.
        let c: ServerConfig = round_trip(json!({"adapters": {}}));
        assert_eq!(c, ServerConfig::default());
        // An empty object is a valid (empty) config.
        let c: ServerConfig = serde_json::from_value(json!({})).expect("reads");
        assert_eq!(c, ServerConfig::default());
    }

    #[test]
    fn fault_injection_without_adapters_applies_to_every_model() {
        let f: FaultInjection = round_trip(json!({"errorRate": 0.5}));
        assert!(f.applies("anything"));
        let off: FaultInjection = round_trip(json!({"errorRate": 0.0}));
        assert!(!off.applies("anything"));
    }

    #[test]
    fn lora_api_bodies_are_vllms() {
        let r: LoadLoraAdapterRequest = round_trip(
            json!({"lora_name": "sql", "lora_path": "/adapters/sql", "load_inplace": false}),
        );
        assert_eq!(r.lora_path, "/adapters/sql");
        // vLLM clients send no load_inplace; a missing name reads as empty (the server's 400).
        let r: LoadLoraAdapterRequest =
            serde_json::from_value(json!({"lora_path": "/x"})).expect("reads");
        assert!(r.lora_name.is_empty() && !r.load_inplace);
        let u: UnloadLoraAdapterRequest = round_trip(json!({"lora_name": "sql"}));
        assert_eq!(u.lora_name, "sql");
        let _: UnloadLoraAdapterRequest = round_trip(json!({"lora_name": "sql", "lora_int_id": 3}));
        assert_eq!(
            lora_loaded_message("sql"),
            "Success: LoRA adapter 'sql' added successfully."
        );
        assert_eq!(
            lora_unloaded_message("sql"),
            "Success: LoRA adapter 'sql' removed successfully."
        );
    }

    #[test]
    fn model_list_is_vllms() {
        let l: ModelList = round_trip(json!({
            "object": "list",
            "data": [
                {"id": "base", "object": "model", "created": 1, "owned_by": "tailor",
                 "root": "/models/base", "parent": null, "max_model_len": 2048},
                {"id": "sql", "object": "model", "created": 1, "owned_by": "tailor",
                 "root": "/adapters/sql", "parent": "base", "max_model_len": null},
            ],
        }));
        let adapters: Vec<&str> = l.adapters().map(|m| m.id.as_str()).collect();
        assert_eq!(adapters, ["sql"]);
    }

    #[test]
    fn error_bodies_carry_openai_names_or_vllm_statuses() {
        let e: ErrorResponse = round_trip(json!({"error": {
            "message": "The model `x` does not exist.", "type": "invalid_request_error",
            "param": "model", "code": "model_not_found"}}));
        assert_eq!(
            e.error.code,
            Some(ErrorCode::Name("model_not_found".into()))
        );
        let e: ErrorResponse = round_trip(json!({"error": {
            "message": "The lora adapter 'x' cannot be found.", "type": "NotFoundError",
            "param": null, "code": 404}}));
        assert_eq!(e.error.code, Some(ErrorCode::Status(404)));
        let e: ErrorResponse = round_trip(json!({"error": {
            "message": "m", "type": "server_error", "param": null, "code": null}}));
        assert_eq!(e.error.code, None);
    }

    #[test]
    fn admin_bodies_round_trip() {
        let s: AdapterStatus =
            round_trip(json!({"name": "a", "path": "/a", "loaded": false, "error": "bad"}));
        assert_eq!(s.error.as_deref(), Some("bad"));
        let _: AdapterStatus = round_trip(json!({"name": "a", "path": "/a", "loaded": true}));
        let _: AddAdapterRequest = round_trip(json!({"name": "a", "path": "/a"}));
        let _: AddAdapterResponse = round_trip(json!({"name": "a", "path": "/a", "loaded": true}));
        let _: DeleteAdapterResponse = round_trip(json!({"name": "a", "deleted": true}));
    }
}
