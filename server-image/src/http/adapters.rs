//! Adapters over HTTP: `GET /v1/models` (listed as vLLM lists them), vLLM's runtime LoRA API
//! (`POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`: vLLM's bodies, status codes
//! and texts), and the deprecated `/admin/adapters` the operator used before the LoRA API.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tailor_wire::server::{
    AddAdapterRequest, AddAdapterResponse, DeleteAdapterResponse, LoadLoraAdapterRequest,
    ModelCard, ModelList, UnloadLoraAdapterRequest, lora_loaded_message, lora_unloaded_message,
};

use super::Shared;
use super::extract::ApiJson;
use crate::adapters::{LoadError, check_adapter_dir};
use crate::error::ApiError;
use crate::remote::{self, RemoteError};

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
    for (name, path) in s.registry.listed() {
        data.push(card(
            name,
            s.remote
                .origin(&path)
                .unwrap_or_else(|| path.display().to_string()),
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
    if !req.load_inplace && s.registry.is_listed(&req.lora_name) {
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
    let fail =
        |e: String| ApiError::LoraBadRequest(format!("Loading lora {} failed: {e}", req.lora_name));
    let path = if remote::is_uri(&req.lora_path) {
        // Fetched into the cache, verified against `sha256` on the way.
        match s
            .remote
            .localize(&req.lora_path, req.sha256.as_deref())
            .await
        {
            Ok(dir) => dir,
            Err(e @ RemoteError::NotFound(_)) => {
                return Err(ApiError::LoraNotFound(format!(
                    "Loading lora {} failed: {e}",
                    req.lora_name
                )));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    } else {
        let path = PathBuf::from(&req.lora_path);
        if let Some(want) = &req.sha256 {
            // Inside the roots first: nothing outside them is read, not even to hash it.
            let dir = check_adapter_dir(&path, &s.registry.roots()).map_err(|_| {
                ApiError::LoraNotFound(format!(
                    "Loading lora {} failed: No adapter found for {}",
                    req.lora_name, req.lora_path
                ))
            })?;
            check_sha256(&dir, want).await.map_err(fail)?;
        }
        path
    };
    if let Some(v) = &s.vllm
        && let Ok(dir) = check_adapter_dir(&path, &s.registry.roots())
    {
        v.check_load(&dir).map_err(ApiError::LoraBadRequest)?;
    }
    match s.registry.load_from_api(&req.lora_name, &path).await {
        Ok(_) => {
            tracing::info!(adapter = %req.lora_name, path = %req.lora_path, "LoRA adapter loaded through the API");
            Ok(text(lora_loaded_message(&req.lora_name)))
        }
        Err(LoadError::NotFound(_)) => Err(ApiError::LoraNotFound(format!(
            "Loading lora {} failed: No adapter found for {}",
            req.lora_name, req.lora_path
        ))),
        // A fetched adapter is named by its URI, not by its place in the cache.
        Err(e) => Err(fail(
            e.to_string()
                .replace(&path.display().to_string(), &req.lora_path),
        )),
    }
}

/// Whether the adapter's weights in `dir` have the sha256 `want`.
async fn check_sha256(dir: &Path, want: &str) -> Result<(), String> {
    let file = dir.join(tailor_artifacts::adapter::WEIGHTS);
    let f = file.clone();
    let (got, _) = tokio::task::spawn_blocking(move || tailor_artifacts::store::sha256_file(&f))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading {}: {e}", file.display()))?;
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(format!(
            "{}: sha256 is {got}, expected {want}",
            file.display()
        ))
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

/// Deprecated: `GET /admin/adapters` (an adapter loaded by URI is listed with its URI).
pub async fn list_adapters(State(s): State<Shared>) -> Response {
    let mut status = s.registry.status();
    for a in &mut status {
        if let Some(uri) = s.remote.origin(Path::new(&a.path)) {
            a.path = uri;
        }
    }
    axum::Json(status).into_response()
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
    let path = if remote::is_uri(&req.path) {
        s.remote
            .localize(&req.path, None)
            .await
            .map_err(|e| ApiError::AdapterLoad(e.to_string()))?
    } else {
        PathBuf::from(&req.path)
    };
    match s.registry.load_from_api(&req.name, &path).await {
        Ok(_) => Ok(axum::Json(AddAdapterResponse {
            name: req.name,
            path: req.path,
            loaded: true,
        })
        .into_response()),
        Err(e) => Err(ApiError::AdapterLoad(
            e.to_string()
                .replace(&path.display().to_string(), &req.path),
        )),
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
