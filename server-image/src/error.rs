//! The one error type of the HTTP API and its mapping to OpenAI's error shape
//! `{"error":{"message","type","param","code"}}` and status codes.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every failure a client can see.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A malformed or invalid request; `param` names the offending field.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The prompt (plus `max_tokens`) does not fit in the context.
    #[error("{0}")]
    ContextLength(String),
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("{0}")]
    AdapterLoad(String),
    #[error("Incorrect API key provided.")]
    Unauthorized,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("Unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("No route for {0}")]
    NotFound(String),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unavailable(String),
    /// Test-only fault injection (`--fault-error-rate`).
    #[error("injected fault (test-only fault injection is enabled for this model)")]
    FaultInjected,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(message: impl Into<String>, param: &'static str) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    /// The mapping table: status, `type`, `param`, `code`.
    pub fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    ) {
        match self {
            Self::BadRequest { param, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                *param,
                None,
            ),
            Self::ContextLength(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
            Self::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            Self::AdapterLoad(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("path"),
                Some("adapter_load_failed"),
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                Some("request_too_large"),
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                None,
                None,
            ),
            Self::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                Some("not_found"),
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                None,
                Some("method_not_allowed"),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("unavailable"),
            ),
            Self::FaultInjected => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                Some("fault_injected"),
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                Some("internal_error"),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The JSON body (also the payload of a mid-stream SSE error event).
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, param, code) = self.parts();
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}
