//! The OpenAI-aware part: read and check the request, choose a target, rewrite `model`, forward,
//! and pass the response back (streams unbuffered, frame by frame).
//!
//! The response body is passed through byte for byte: its `model` field is the *target's* model
//! name (the adapter that served it), not the served name the client asked for. The router adds
//! `x-tailor-target` (target name) and `x-tailor-revision` (if set) response headers.
//!
//! The client's `Authorization` (and `api-key`) header is a user's key for the router: it never
//! goes upstream. With `--backend-token-file` the router presents its own token instead.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Frame, SizeHint};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth;
use crate::error::ApiError;
use crate::metrics::{ErrorLabels, RequestLabels, TargetLabels};
use crate::split;
use crate::state::{AppState, Snapshot};
use crate::stats::{ErrorClass, Outcome, TargetStats, classify, status_class};

/// The fixed `reason` label of `tailor_router_rejected_total` for an error.
fn reject_reason(e: &ApiError) -> &'static str {
    match e {
        ApiError::MissingApiKey
        | ApiError::InvalidApiKey
        | ApiError::MissingAdminToken
        | ApiError::InvalidAdminToken => "unauthorized",
        ApiError::RateLimited { .. } => "rate_limited",
        ApiError::Overloaded { .. } => "overloaded",
        ApiError::BodyTooLarge { .. } => "too_large",
        ApiError::BodyTimeout(_) => "body_timeout",
        ApiError::BodyRead(_) | ApiError::MalformedJson(_) | ApiError::InvalidRequest(_) => {
            "bad_request"
        }
        ApiError::ModelNotFound(_) => "model_not_found",
        ApiError::UnknownPath(_) | ApiError::MethodNotAllowed(_) => "not_found",
        ApiError::NoTarget(_) => "no_target",
        ApiError::UpstreamConnect(_) | ApiError::UpstreamTimeout(..) | ApiError::Upstream(..) => {
            "upstream"
        }
    }
}

/// Answers a refused request, counting it.
pub fn reject(state: &AppState, e: ApiError) -> Response {
    state.metrics.reject(reject_reason(&e));
    tracing::debug!(error = %e, "request refused");
    e.into_response()
}

/// Checks the API key and the key's rate limit (no-op when authentication is off).
pub fn check_key(state: &AppState, snap: &Snapshot, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(keys) = &snap.config.api_keys {
        let key = auth::authenticate(keys, headers)?;
        state.limiters.admit(key, Instant::now())?;
    }
    Ok(())
}

/// `GET /v1/models`: the served names.
pub async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let snap = state.snapshot();
    if let Err(e) = check_key(&state, &snap, &headers) {
        return reject(&state, e);
    }
    let data: Vec<Value> = snap
        .config
        .route_order
        .iter()
        .map(
            |m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "tailor"}),
        )
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// Any other path.
pub async fn not_found(State(state): State<Arc<AppState>>, req: Request) -> Response {
    reject(&state, ApiError::UnknownPath(req.uri().path().to_string()))
}

/// A known path with the wrong method.
pub async fn method_not_allowed(State(state): State<Arc<AppState>>, req: Request) -> Response {
    reject(&state, ApiError::MethodNotAllowed(req.method().to_string()))
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    // Taken before the body is read (bodies are what a flood of requests holds in memory) and
    // held until the response body ends.
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        return reject(
            &state,
            ApiError::Overloaded {
                limit: state.max_in_flight,
            },
        );
    };
    let snap = state.snapshot();
    let (parts, body) = req.into_parts();
    let prepared = match prepare(&state, &snap, &parts.headers, body).await {
        Ok(p) => p,
        Err(e) => return reject(&state, e),
    };
    let path_and_query = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    forward(
        &state,
        &snap,
        prepared,
        &path_and_query,
        &parts.headers,
        permit,
    )
    .await
}

struct Prepared {
    route: String,
    target: usize,
    body: Bytes,
}

/// The user a request belongs to: the body's `user`, else the `X-User-Id` header.
pub fn user_of<'a>(body: &'a Value, headers: &'a HeaderMap) -> Option<&'a str> {
    body.get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .or_else(|| {
            headers
                .get("x-user-id")
                .and_then(|v| v.to_str().ok())
                .filter(|u| !u.is_empty())
        })
}

async fn prepare(
    state: &AppState,
    snap: &Snapshot,
    headers: &HeaderMap,
    body: Body,
) -> Result<Prepared, ApiError> {
    check_key(state, snap, headers)?;
    let limit = snap.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let deadline = state.body_read_timeout;
    let bytes = match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => return Err(ApiError::BodyTimeout(deadline.as_secs_f64())),
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::BodyTooLarge { limit });
        }
        Ok(Err(e)) => return Err(ApiError::BodyRead(e.to_string())),
    };
    let mut json: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let model = match json.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "`model` must be a string".to_string(),
            ));
        }
        None if json.is_object() => {
            return Err(ApiError::InvalidRequest(
                "you must provide a `model` parameter".to_string(),
            ));
        }
        None => {
            return Err(ApiError::MalformedJson(
                "the body must be a JSON object".to_string(),
            ));
        }
    };
    let route = snap
        .config
        .routes
        .get(&model)
        .ok_or_else(|| ApiError::ModelNotFound(model.clone()))?;
    let point = match user_of(&json, headers) {
        Some(user) => split::user_point(&model, user),
        None => split::random_point(),
    };
    let target = split::pick(&route.weights(), point).ok_or(ApiError::NoTarget(model.clone()))?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert(
            "model".to_string(),
            Value::String(route.targets[target].model.clone()),
        );
    }
    let body = serde_json::to_vec(&json).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    Ok(Prepared {
        route: model,
        target,
        body: Bytes::from(body),
    })
}

/// Hop-by-hop headers, never forwarded in either direction.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The request to a backend: the client's headers less hop-by-hop ones and the client's own
/// credentials, plus the router's backend token when it has one.
fn upstream_request(
    base: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    backend_auth: Option<HeaderValue>,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let mut builder = http::Request::post(format!("{base}{path_and_query}"));
    if let Some(h) = builder.headers_mut() {
        for (name, value) in headers {
            if is_hop_by_hop(name)
                || name == header::HOST
                || name == header::CONTENT_LENGTH
                || name == header::AUTHORIZATION
                || name.as_str() == "api-key"
            {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Some(auth) = backend_auth {
            h.insert(header::AUTHORIZATION, auth);
        }
    }
    builder.body(Full::new(body))
}

/// Records a request's outcome (metrics and `/stats`) when dropped: at the end of the response
/// body, or when the client goes away, or right away for a router-made error.
struct Completion {
    state: Arc<AppState>,
    stats: Arc<TargetStats>,
    route: String,
    target: String,
    start: Instant,
    status: u16,
    error: Option<ErrorClass>,
    /// The request's in-flight slot, freed with the completion.
    _permit: OwnedSemaphorePermit,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let latency = self.start.elapsed();
        let m = &self.state.metrics;
        m.in_flight.dec();
        m.requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                target: self.target.clone(),
                status_class: status_class(self.status).to_string(),
            })
            .inc();
        if let Some(class) = self.error {
            m.errors
                .get_or_create(&ErrorLabels {
                    route: self.route.clone(),
                    target: self.target.clone(),
                    class: class.label().to_string(),
                })
                .inc();
        }
        m.duration
            .get_or_create(&TargetLabels {
                route: self.route.clone(),
                target: self.target.clone(),
            })
            .observe(latency.as_secs_f64());
        self.stats.record(
            Outcome {
                status: self.status,
                error: self.error,
                latency,
            },
            Instant::now(),
        );
    }
}

/// The backend's response body, passed through frame by frame, with the request's
/// [`Completion`] riding along.
struct ObservedBody {
    inner: hyper::body::Incoming,
    completion: Completion,
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            tracing::warn!(target = %self.completion.target, error = %e, "backend response body failed");
            if self.completion.error.is_none() {
                self.completion.error = Some(ErrorClass::Other);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn forward(
    state: &Arc<AppState>,
    snap: &Snapshot,
    prepared: Prepared,
    path_and_query: &str,
    headers: &HeaderMap,
    permit: OwnedSemaphorePermit,
) -> Response {
    let Some(route) = snap.config.routes.get(&prepared.route) else {
        return reject(state, ApiError::ModelNotFound(prepared.route));
    };
    let target = &route.targets[prepared.target];
    let stats = state.stats.target(&route.model, &target.name);
    state.metrics.in_flight.inc();
    let mut completion = Completion {
        state: state.clone(),
        stats: stats.clone(),
        route: route.model.clone(),
        target: target.name.clone(),
        start: Instant::now(),
        status: 502,
        error: None,
        _permit: permit,
    };

    let start = target.next_backend.fetch_add(1, Ordering::Relaxed);
    let same_revision = route
        .targets
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            *i != prepared.target && t.revision.is_some() && t.revision == target.revision
        })
        .map(|(_, t)| t.backends.as_slice());
    let mut urls = split::attempt_order(&target.backends, start, same_revision);
    if urls.len() == 1 {
        // One URL (a Service): the retry goes through it again, to whichever pod it picks.
        urls.push(urls[0]);
    }
    let timeout = snap.config.request_timeout;

    for (attempt, base) in urls.iter().take(2).enumerate() {
        let request = match upstream_request(
            base,
            path_and_query,
            headers,
            state.backend_token.as_ref().map(|t| t.bearer()),
            prepared.body.clone(),
        ) {
            Ok(r) => r,
            Err(e) => {
                completion.error = Some(ErrorClass::Other);
                return ApiError::Upstream(target.name.clone(), e.to_string()).into_response();
            }
        };
        match tokio::time::timeout(timeout, snap.client.request(request)).await {
            Err(_) => {
                completion.status = 504;
                completion.error = Some(ErrorClass::Timeout);
                return ApiError::UpstreamTimeout(target.name.clone(), timeout.as_secs_f64())
                    .into_response();
            }
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(target = %target.name, backend = %base, error = %e, "connect failed");
                if attempt == 0 {
                    stats.record_retry();
                    state
                        .metrics
                        .retries
                        .get_or_create(&TargetLabels {
                            route: route.model.clone(),
                            target: target.name.clone(),
                        })
                        .inc();
                    continue;
                }
                completion.error = Some(ErrorClass::Connect);
                return ApiError::UpstreamConnect(target.name.clone()).into_response();
            }
            Ok(Err(e)) => {
                tracing::warn!(target = %target.name, backend = %base, error = %e, "backend request failed");
                completion.error = Some(ErrorClass::Other);
                return ApiError::Upstream(target.name.clone(), e.to_string()).into_response();
            }
            Ok(Ok(response)) => {
                let (parts, body) = response.into_parts();
                completion.status = parts.status.as_u16();
                completion.error = classify(completion.status);
                let mut builder = Response::builder().status(parts.status);
                if let Some(h) = builder.headers_mut() {
                    for (name, value) in &parts.headers {
                        if !is_hop_by_hop(name) {
                            h.append(name.clone(), value.clone());
                        }
                    }
                    if let Ok(v) = HeaderValue::from_str(&target.name) {
                        h.insert("x-tailor-target", v);
                    }
                    if let Some(Ok(v)) = target.revision.as_deref().map(HeaderValue::from_str) {
                        h.insert("x-tailor-revision", v);
                    }
                }
                let body = Body::new(ObservedBody {
                    inner: body,
                    completion,
                });
                return builder.body(body).unwrap_or_else(|e| {
                    ApiError::Upstream(target.name.clone(), e.to_string()).into_response()
                });
            }
        }
    }
    completion.error = Some(ErrorClass::Connect);
    ApiError::UpstreamConnect(target.name.clone()).into_response()
}
