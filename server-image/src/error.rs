//! The one error type of the HTTP API and the one table mapping it to a status code and an
//! error body `{"error": {message, type, param, code}}`: OpenAI's types and string codes for the
//! OpenAI API, vLLM's types and numeric codes for vLLM's LoRA API.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tailor_wire::server::{ErrorCode, ErrorInfo, ErrorResponse};

/// Every failure a client can see.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A malformed or invalid request; `param` names the offending field.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// A parameter tailor-server does not implement (`tools`, `n > 1`, ...) or does not know.
    #[error("{message}")]
    Unsupported { message: String, param: String },
    /// The prompt (plus `max_tokens`) does not fit in the context.
    #[error("{message}")]
    ContextLength {
        message: String,
        param: &'static str,
    },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// Deprecated admin API: an adapter that cannot be loaded.
    #[error("{0}")]
    AdapterLoad(String),
    #[error("Incorrect API key provided.")]
    Unauthorized,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("Unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The request body did not arrive within `--body-read-timeout`.
    #[error("the request body was not received within {0}")]
    RequestTimeout(String),
    /// More completion requests in flight than `--max-in-flight`.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("No route for {0}")]
    NotFound(String),
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// Loading, draining, or the engine has died.
    #[error("{0}")]
    Unavailable(String),
    /// Test-only fault injection (`--fault-error-rate`).
    #[error("injected fault (test-only fault injection is enabled for this model)")]
    FaultInjected,
    #[error("{0}")]
    Internal(String),
    /// vLLM LoRA API: a request vLLM calls invalid user input (400).
    #[error("{0}")]
    LoraInvalid(String),
    /// vLLM LoRA API: unknown adapter, or no adapter at the path (404).
    #[error("{0}")]
    LoraNotFound(String),
    /// vLLM LoRA API: a body vLLM would reject, or an adapter that exists but cannot be
    /// loaded (400).
    #[error("{0}")]
    LoraBadRequest(String),
}

/// One row of the table: what a client sees for an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub status: StatusCode,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<ErrorCode>,
}

fn openai(
    status: StatusCode,
    kind: &'static str,
    param: Option<&str>,
    code: Option<&str>,
) -> Shape {
    Shape {
        status,
        kind,
        param: param.map(str::to_string),
        code: code.map(|c| ErrorCode::Name(c.to_string())),
    }
}

fn vllm(status: StatusCode, kind: &'static str) -> Shape {
    Shape {
        status,
        kind,
        param: None,
        code: Some(ErrorCode::Status(status.as_u16())),
    }
}

impl ApiError {
    pub fn bad(message: impl Into<String>, param: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unsupported {
            message: message.into(),
            param: param.into(),
        }
    }

    /// The table.
    pub fn shape(&self) -> Shape {
        use StatusCode as S;
        const INVALID: &str = "invalid_request_error";
        const SERVER: &str = "server_error";
        match self {
            Self::BadRequest { param, .. } => {
                openai(S::BAD_REQUEST, INVALID, param.as_deref(), None)
            }
            Self::Unsupported { param, .. } => openai(
                S::BAD_REQUEST,
                INVALID,
                Some(param),
                Some("unsupported_parameter"),
            ),
            Self::ContextLength { param, .. } => openai(
                S::BAD_REQUEST,
                INVALID,
                Some(param),
                Some("context_length_exceeded"),
            ),
            Self::ModelNotFound(_) => openai(
                S::NOT_FOUND,
                INVALID,
                Some("model"),
                Some("model_not_found"),
            ),
            Self::AdapterLoad(_) => openai(
                S::BAD_REQUEST,
                INVALID,
                Some("path"),
                Some("adapter_load_failed"),
            ),
            Self::Unauthorized => openai(S::UNAUTHORIZED, INVALID, None, Some("invalid_api_key")),
            Self::PayloadTooLarge(_) => openai(
                S::PAYLOAD_TOO_LARGE,
                INVALID,
                None,
                Some("request_too_large"),
            ),
            Self::UnsupportedMediaType(_) => openai(S::UNSUPPORTED_MEDIA_TYPE, INVALID, None, None),
            Self::RequestTimeout(_) => {
                openai(S::REQUEST_TIMEOUT, INVALID, None, Some("request_timeout"))
            }
            Self::TooManyRequests(_) => openai(
                S::TOO_MANY_REQUESTS,
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::NotFound(_) => openai(S::NOT_FOUND, INVALID, None, Some("not_found")),
            Self::MethodNotAllowed => openai(
                S::METHOD_NOT_ALLOWED,
                INVALID,
                None,
                Some("method_not_allowed"),
            ),
            Self::Unavailable(_) => {
                openai(S::SERVICE_UNAVAILABLE, SERVER, None, Some("unavailable"))
            }
            Self::FaultInjected => openai(
                S::INTERNAL_SERVER_ERROR,
                SERVER,
                None,
                Some("fault_injected"),
            ),
            Self::Internal(_) => openai(
                S::INTERNAL_SERVER_ERROR,
                SERVER,
                None,
                Some("internal_error"),
            ),
            Self::LoraInvalid(_) => vllm(S::BAD_REQUEST, "InvalidUserInput"),
            Self::LoraNotFound(_) => vllm(S::NOT_FOUND, "NotFoundError"),
            Self::LoraBadRequest(_) => vllm(S::BAD_REQUEST, "BadRequestError"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.shape().status
    }

    /// The error body (also the payload of a mid-stream SSE error event).
    pub fn body(&self) -> ErrorResponse {
        let s = self.shape();
        ErrorResponse {
            error: ErrorInfo {
                message: self.to_string(),
                kind: s.kind.to_string(),
                param: s.param,
                code: s.code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), Json(self.body())).into_response();
        if matches!(self, Self::RequestTimeout(_)) {
            // The rest of the body may never come: the connection cannot be reused.
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_errors_carry_names_and_vllm_errors_statuses() {
        let e = ApiError::unsupported("tools", "tools are not supported");
        let b = serde_json::to_value(e.body()).expect("json");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(b["error"]["param"], "tools");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], "unsupported_parameter");

        let e = ApiError::LoraNotFound("The lora adapter 'x' cannot be found.".into());
        let b = serde_json::to_value(e.body()).expect("json");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(b["error"]["type"], "NotFoundError");
        assert_eq!(b["error"]["code"], 404);
        assert_eq!(b["error"]["param"], serde_json::Value::Null);

        let e = ApiError::TooManyRequests("busy".into());
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        let e = ApiError::Unavailable("engine died".into());
        let b = serde_json::to_value(e.body()).expect("json");
        assert_eq!(
            (e.status().as_u16(), &b["error"]["code"]),
            (503, &serde_json::json!("unavailable"))
        );
    }
}
