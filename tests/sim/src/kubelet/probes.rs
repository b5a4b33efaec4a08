//! HTTP, TCP and exec probes, run against the pod's loopback IP.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn port_of(probe_port: &Value, container: &Value) -> Option<u16> {
    match probe_port {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.parse().ok().or_else(|| {
            container["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str() == Some(s.as_str()))?["containerPort"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
        }),
        _ => None,
    }
}

/// One probe attempt: true on success.
pub async fn run(probe: &Value, container: &Value, ip: &str) -> bool {
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    let fut = async {
        if let Some(h) = probe["httpGet"].as_object() {
            let Some(port) = port_of(h.get("port").unwrap_or(&Value::Null), container) else {
                return false;
            };
            let path = h.get("path").and_then(Value::as_str).unwrap_or("/");
            let Ok(mut s) = tokio::net::TcpStream::connect((ip, port)).await else {
                return false;
            };
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for hd in h
                .get("httpHeaders")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                req.push_str(&format!(
                    "{}: {}\r\n",
                    hd["name"].as_str().unwrap_or(""),
                    hd["value"].as_str().unwrap_or("")
                ));
            }
            req.push_str("\r\n");
            if s.write_all(req.as_bytes()).await.is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < 12 {
                match s.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let line = String::from_utf8_lossy(&buf[..got]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (200..400).contains(&code)
        } else if let Some(t) = probe["tcpSocket"].as_object() {
            let Some(port) = port_of(t.get("port").unwrap_or(&Value::Null), container) else {
                return false;
            };
            tokio::net::TcpStream::connect((ip, port)).await.is_ok()
        } else if let Some(cmd) = probe["exec"]["command"].as_array() {
            let args: Vec<String> = cmd
                .iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect();
            let Some((first, rest)) = args.split_first() else {
                return false;
            };
            tokio::process::Command::new(first)
                .args(rest)
                .status()
                .await
                .is_ok_and(|s| s.success())
        } else {
            true
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(false)
}
