//! The JSON body extractor: a `Content-Type` check, the body read within `--max-body-bytes`
//! and `--body-read-timeout`, and one typed parse whose errors name the offending field — every
//! rejection in our error shape, none in the framework's.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::Shared;
use crate::error::ApiError;

/// A JSON body parsed into `T`.
pub struct ApiJson<T>(pub T);

/// The request body's bytes, read within the size and time bounds.
pub async fn body_bytes(req: Request, state: &Shared) -> Result<Bytes, ApiError> {
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json") || v.contains("+json"));
    if !json_type {
        return Err(ApiError::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ));
    }
    let limit = state.body_read_timeout;
    match tokio::time::timeout(limit, Bytes::from_request(req, state)).await {
        Err(_) => Err(ApiError::RequestTimeout(
            humantime::format_duration(limit).to_string(),
        )),
        Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
            ApiError::PayloadTooLarge(format!("request body too large: {}", e.body_text())),
        ),
        Ok(Err(e)) => Err(ApiError::BadRequest {
            message: format!("cannot read the request body: {}", e.body_text()),
            param: None,
        }),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Parses `bytes` as `T`; a type error names the field's path (`messages[0].content`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest {
                message: format!("We could not parse the JSON body of your request: {inner}"),
                param: None,
            }
        } else if path == "." {
            ApiError::BadRequest {
                message: format!("invalid request body: {inner}"),
                param: None,
            }
        } else {
            ApiError::bad(format!("invalid value for {path}: {inner}"), path)
        }
    })
}

impl<T: DeserializeOwned> FromRequest<Shared> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        parse(&bytes).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        temperature: Option<f64>,
        messages: Option<Vec<Message>>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Message {
        role: String,
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse::<Body>(br#"{"temperature": "hot"}"#).expect_err("rejected");
        assert!(
            matches!(&e, ApiError::BadRequest { param: Some(p), .. } if p == "temperature"),
            "{e:?}"
        );
        let e = parse::<Body>(br#"{"messages": [{"role": 3}]}"#).expect_err("rejected");
        assert!(
            matches!(&e, ApiError::BadRequest { param: Some(p), .. } if p == "messages[0].role"),
            "{e:?}"
        );
        let e = parse::<Body>(b"{not json").expect_err("rejected");
        assert!(
            matches!(&e, ApiError::BadRequest { param: None, .. }),
            "{e:?}"
        );
        let e = parse::<Body>(b"[1]").expect_err("rejected");
        assert!(
            matches!(&e, ApiError::BadRequest { param: None, .. }),
            "{e:?}"
        );
    }
}
