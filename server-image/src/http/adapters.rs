//! Adapters over HTTP: `GET /v1/models` (listed as vLLM lists them), vLLM's runtime LoRA API
//! (`POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`: vLLM's bodies, status codes
//! and texts), and the deprecated `/admin/adapters` the operator used before the LoRA API.

use std::path::PathBuf;

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tailor_wire::server::{
    AddAdapterRequest, AddAdapterResponse, DeleteAdapterResponse, LoadLoraAdapterRequest,
    ModelCard, ModelList, UnloadLoraAdapterRequest, lora_loaded_message, lora_unloaded_message,
};

use super::Shared;
use super::extract::ApiJson;
use crate::adapters::LoadError;
use crate::error::ApiError;

pub async fn models(State(s): State<Shared>) -> Response {
    let served = s.served_name();
    let card = |id: String, root: String, parent: Option<String>, max_model_len| ModelCard {
        id,
        object: "model".into(),
        created: s.created,
        owned_by: "tailor".into(),
        root: Some(root),
        parent,
        max_model_len,
    };
    let mut data = vec![card(
        served.clone(),
        s.model_dir.display().to_string(),
        None,
        Some(s.max_seq as u64),
    )];
    for (name, path) in s.registry.known() {
        data.push(card(
            name,
            path.display().to_string(),
            Some(served.clone()),
            None,
        ));
    }
    axum::Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response()
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A name that cannot be an adapter's: empty, or the base model's.
fn invalid_name(s: &Shared, name: &str) -> bool {
    name.is_empty() || name == s.served_name()
}

/// A malformed body, in vLLM's shape.
fn lora_body_error(e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest { message, .. } => ApiError::LoraBadRequest(message),
        e => e,
    }
}

/// `POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace?}`.
pub async fn load_lora_adapter(
    State(s): State<Shared>,
    body: Result<ApiJson<LoadLoraAdapterRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(req) = body.map_err(lora_body_error)?;
    if req.lora_name.is_empty() || req.lora_path.is_empty() {
        return Err(ApiError::LoraInvalid(
            "Both 'lora_name' and 'lora_path' must be provided.".into(),
        ));
    }
    if !req.load_inplace && s.registry.is_known(&req.lora_name) {
        return Err(ApiError::LoraInvalid(format!(
            "The lora adapter '{}' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True.",
            req.lora_name
        )));
    }
    if invalid_name(&s, &req.lora_name) {
        return Err(ApiError::LoraInvalid(format!(
            "'{}' cannot name a LoRA adapter: it is the base model's name",
            req.lora_name
        )));
    }
    let path = PathBuf::from(&req.lora_path);
    match s.registry.load_from_api(&req.lora_name, &path).await {
        Ok(_) => {
            tracing::info!(adapter = %req.lora_name, path = %req.lora_path, "LoRA adapter loaded through the API");
            Ok(text(lora_loaded_message(&req.lora_name)))
        }
        Err(LoadError::NotFound(_)) => Err(ApiError::LoraNotFound(format!(
            "Loading lora {} failed: No adapter found for {}",
            req.lora_name, req.lora_path
        ))),
        Err(e) => Err(ApiError::LoraBadRequest(format!(
            "Loading lora {} failed: {e}",
            req.lora_name
        ))),
    }
}

/// `POST /v1/unload_lora_adapter {lora_name}`.
pub async fn unload_lora_adapter(
    State(s): State<Shared>,
    body: Result<ApiJson<UnloadLoraAdapterRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(req) = body.map_err(lora_body_error)?;
    if req.lora_name.is_empty() {
        return Err(ApiError::LoraInvalid(
            "'lora_name' needs to be provided to unload a LoRA adapter.".into(),
        ));
    }
    if !s.registry.remove(&req.lora_name) {
        return Err(ApiError::LoraNotFound(format!(
            "The lora adapter '{}' cannot be found.",
            req.lora_name
        )));
    }
    tracing::info!(adapter = %req.lora_name, "LoRA adapter unloaded through the API");
    Ok(text(lora_unloaded_message(&req.lora_name)))
}

/// Deprecated: `GET /admin/adapters`.
pub async fn list_adapters(State(s): State<Shared>) -> Response {
    axum::Json(s.registry.status()).into_response()
}

/// Deprecated: `POST /admin/adapters {name, path}` registers (or re-points) and loads now.
pub async fn add_adapter(
    State(s): State<Shared>,
    body: Result<ApiJson<AddAdapterRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(req) = body?;
    if invalid_name(&s, &req.name) {
        return Err(ApiError::bad(
            format!("invalid adapter name {:?}", req.name),
            "name",
        ));
    }
    match s
        .registry
        .load_from_api(&req.name, &PathBuf::from(&req.path))
        .await
    {
        Ok(_) => Ok(axum::Json(AddAdapterResponse {
            name: req.name,
            path: req.path,
            loaded: true,
        })
        .into_response()),
        Err(e) => Err(ApiError::AdapterLoad(e.to_string())),
    }
}

/// Deprecated: `DELETE /admin/adapters/NAME` unloads and forgets.
pub async fn delete_adapter(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    if s.registry.remove(&name) {
        Ok(axum::Json(DeleteAdapterResponse {
            name,
            deleted: true,
        })
        .into_response())
    } else {
        Err(ApiError::ModelNotFound(name))
    }
}
