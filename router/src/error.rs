//! One error type for everything the router answers itself, and the one table that maps it to
//! an HTTP status and an OpenAI-shaped body: `{"error":{"message","type","param","code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error the router answers on its own (the backend never saw the request, or it failed).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    MissingApiKey,
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("missing admin token: send `Authorization: Bearer <token>`")]
    MissingAdminToken,
    #[error("invalid admin token")]
    InvalidAdminToken,
    #[error("rate limit exceeded for API key {key:?}; retry after {retry_after_secs} s")]
    RateLimited { key: String, retry_after_secs: u64 },
    #[error("the router has {limit} requests in progress, its limit; retry shortly")]
    Overloaded { limit: usize },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(f64),
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("no route for {0}")]
    UnknownPath(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("route `{0}` has no target with a positive weight")]
    NoTarget(String),
    #[error("could not connect to the backend for target `{0}`")]
    UpstreamConnect(String),
    #[error("the backend for target `{0}` did not answer within {1} s")]
    UpstreamTimeout(String, f64),
    #[error("the backend for target `{0}` failed: {1}")]
    Upstream(String, String),
}

impl ApiError {
    /// Status, OpenAI `type`, `param` and `code` for each error.
    fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    ) {
        use ApiError::*;
        match self {
            MissingApiKey | InvalidApiKey | MissingAdminToken | InvalidAdminToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                Some("rate_limit_exceeded"),
            ),
            Overloaded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                Some("overloaded"),
            ),
            BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                None,
                Some("request_timeout"),
            ),
            BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                Some("request_too_large"),
            ),
            BodyRead(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None, None),
            MalformedJson(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                Some("invalid_json"),
            ),
            InvalidRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model"),
                None,
            ),
            ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            UnknownPath(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                Some("unknown_url"),
            ),
            MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                None,
                Some("method_not_allowed"),
            ),
            NoTarget(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("model"),
                Some("no_target"),
            ),
            UpstreamConnect(_) => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                None,
                Some("upstream_connect_error"),
            ),
            UpstreamTimeout(..) => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                None,
                Some("upstream_timeout"),
            ),
            Upstream(..) => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                None,
                Some("upstream_error"),
            ),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, param, code) = self.parts();
        let body = json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": param,
                "code": code,
            }
        });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Overloaded { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            // The rest of the body may still come: the connection cannot carry another request.
            ApiError::BodyTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
