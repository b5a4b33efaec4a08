//! The operator's HTTP client side: what it reads from pods (trainer `/progress`, the servers'
//! adapter API, the router's `/stats`) and from Prometheus. Every answer is read with a size
//! bound and a timeout, so a pod or a user-named address cannot make the operator buffer
//! without end; tokens go in the `Authorization` header and never into an error message.

use serde::de::DeserializeOwned;

/// The most the operator reads of an answer from a pod or Prometheus: far above any real
/// `/progress`, `/stats`, adapter list or instant query result.
pub const SMALL_BODY: u64 = 1 << 20;

/// GET `url` (with `token` as a bearer token) and parse its JSON, reading at most `max` bytes.
pub async fn get_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    max: u64,
) -> Result<T, String> {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| describe(url, &e))?;
    let status = resp.status();
    let body = read_body(resp, max)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: invalid JSON: {e}"))
}

/// The body of `resp`, refusing more than `max` bytes (a declared length over it is refused
/// before anything is read).
pub async fn read_body(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(format!("answer larger than {max} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if (out.len() + chunk.len()) as u64 > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A transport error without the URL's query (which may hold what the user wrote) repeated.
pub fn describe(url: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{url}: {kind}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn serve(app: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn big_answers_are_refused_declared_or_streamed() {
        let big = vec![b'x'; 3000];
        let streamed = big.clone();
        let base = serve(
            axum::Router::new()
                .route("/ok", get(|| async { "{\"a\":1}" }))
                .route("/big", get(move || async move { big.clone() }))
                .route(
                    "/stream",
                    get(move || async move {
                        let chunks = streamed
                            .chunks(100)
                            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                            .collect::<Vec<_>>();
                        axum::body::Body::from_stream(futures::stream::iter(chunks))
                    }),
                )
                .route(
                    "/auth",
                    get(|h: axum::http::HeaderMap| async move {
                        if h.get("authorization").and_then(|v| v.to_str().ok())
                            == Some("Bearer t0k3n")
                        {
                            (axum::http::StatusCode::OK, "{\"a\":2}")
                        } else {
                            (axum::http::StatusCode::UNAUTHORIZED, "{}")
                        }
                    }),
                ),
        )
        .await;
        let http = reqwest::Client::new();
        let v: serde_json::Value = get_json(&http, &format!("{base}/ok"), None, 100)
            .await
            .expect("small");
        assert_eq!(v["a"], 1);
        for path in ["big", "stream"] {
            let e = get_json::<serde_json::Value>(&http, &format!("{base}/{path}"), None, 1000)
                .await
                .expect_err("too big");
            assert!(e.contains("larger than 1000 bytes"), "{path}: {e}");
        }
        let e = get_json::<serde_json::Value>(&http, &format!("{base}/auth"), None, 100)
            .await
            .expect_err("no token");
        assert!(e.contains("401"), "{e}");
        let v: serde_json::Value = get_json(&http, &format!("{base}/auth"), Some("t0k3n"), 100)
            .await
            .expect("token");
        assert_eq!(v["a"], 2);
        let e = get_json::<serde_json::Value>(&http, "http://127.0.0.1:1/x", Some("t0k3n"), 100)
            .await
            .expect_err("refused");
        assert!(!e.contains("t0k3n"));
    }
}
