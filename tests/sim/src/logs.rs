//! `pods/log`: the kubelet's captured container output, with follow, tailLines and previous.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::kubelet::log_path;
use crate::server::{Body, Req, full, stream_response};
use crate::status::{ApiError, ApiResult};

pub async fn serve(
    cluster: &Arc<Cluster>,
    ns: &str,
    name: &str,
    req: &Req,
) -> ApiResult<Response<Body>> {
    let pod = cluster
        .store
        .get("/pods", ns, name)
        .ok_or_else(|| ApiError::not_found("", "pods", name))?;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match req.q("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            let init: Vec<String> = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect();
            if !containers.iter().any(|x| x == c) && !init.iter().any(|x| x == c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.to_string()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let previous = req.q("previous") == Some("true");
    let path = log_path(&cluster.cfg.state_dir, uid, &container, previous);
    if !path.exists() {
        let waiting = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"].as_str() == Some(container.as_str()))
            .and_then(|c| c["state"]["waiting"]["reason"].as_str().map(String::from))
            .unwrap_or_else(|| "ContainerCreating".into());
        if previous {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )));
        }
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {waiting}"
        )));
    }
    let data = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::internal(format!("reading log: {e}")))?;
    let mut text = data;
    if let Some(n) = req.q("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        let s = String::from_utf8_lossy(&text).into_owned();
        let lines: Vec<&str> = s.lines().collect();
        let start = lines.len().saturating_sub(n);
        let mut out = lines[start..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        text = out.into_bytes();
    }
    if req.q("follow") != Some("true") {
        return Ok(Response::builder()
            .status(200)
            .header("Content-Type", "text/plain")
            .body(full(text))
            .unwrap_or_else(|_| Response::new(full(""))));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let cluster = cluster.clone();
    let (ns, name, uid) = (ns.to_string(), name.to_string(), uid.to_string());
    let offset = tokio::fs::metadata(&path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    tokio::spawn(async move {
        if tx.send(Bytes::from(text)).await.is_err() {
            return;
        }
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut pos = offset;
        loop {
            if f.seek(std::io::SeekFrom::Start(pos)).await.is_err() {
                return;
            }
            let mut buf = vec![];
            if let Ok(n) = f.read_to_end(&mut buf).await
                && n > 0
            {
                pos += n as u64;
                if tx.send(Bytes::from(buf)).await.is_err() {
                    return;
                }
                continue;
            }
            // Stop following once the container has terminated (or the pod is gone).
            let running = cluster.store.get("/pods", &ns, &name).is_some_and(|p| {
                p["metadata"]["uid"].as_str() == Some(uid.as_str())
                    && !matches!(
                        p["status"]["phase"].as_str(),
                        Some("Succeeded") | Some("Failed")
                    )
            });
            if !running {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Ok(stream_response(rx, "text/plain"))
}
