//! `tailor-sim bench`: start a simulator (this binary, `up`, in a temp dir), install a CRD,
//! open N watchers, create M custom objects one request at a time, and report request latency
//! percentiles, watch delivery, list latency and the simulator's resident memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

#[derive(clap::Parser, Clone)]
pub struct BenchArgs {
    /// Custom objects to create.
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Concurrent watchers on the custom resource.
    #[arg(long, default_value_t = 5)]
    pub watchers: usize,
}

struct Conn {
    addr: String,
    token: String,
    tls: tokio_rustls::TlsConnector,
}

impl Conn {
    async fn open(&self) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        let tls = self
            .tls
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
            .await?;
        let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<http::Request<Full<Bytes>>> {
        let b = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        Ok(http::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "localhost")
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .body(Full::new(b))?)
    }
}

async fn send(
    c: &mut http1::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    c.ready().await?;
    Ok(c.send_request(req).await?)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tailor-sim-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["up", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("simulator pid")?;
    let start = Instant::now();
    while !kubeconfig.exists() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("simulator did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = dir.join("state");
    let port = std::fs::read_to_string(state.join("port"))?
        .trim()
        .to_string();
    let token = std::fs::read_to_string(state.join("admin-token"))?
        .trim()
        .to_string();
    let ca = std::fs::read(state.join("ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&ca).context("CA")?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = Arc::new(Conn {
        addr: format!("127.0.0.1:{port}"),
        token,
        tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
    });
    let mut c = conn.open().await?;
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "benches.example.tailor.dev"},
        "spec": {"group": "example.tailor.dev", "scope": "Namespaced", "names": {"kind": "Bench", "plural": "benches"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                    "x-kubernetes-validations": [{"rule": "self.size <= 1000", "message": "too big"}],
                    "properties": {"size": {"type": "integer", "minimum": 1}, "color": {"type": "string", "default": "red"}}}}}}}]}});
    let r = send(
        &mut c,
        conn.req(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(&crd),
        )?,
    )
    .await?;
    if !r.status().is_success() {
        bail!("creating CRD: {}", r.status());
    }
    let rss_before = rss_kib(pid);
    let base = "/apis/example.tailor.dev/v1/namespaces/default/benches";
    // Watchers count ADDED events.
    let seen: Vec<Arc<AtomicUsize>> = (0..a.watchers)
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    for s in &seen {
        let mut w = conn.open().await?;
        let s = s.clone();
        let resp = send(
            &mut w,
            conn.req(
                "GET",
                &format!("{base}?watch=true&allowWatchBookmarks=true"),
                None,
            )?,
        )
        .await?;
        tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    buf.extend_from_slice(d);
                    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        if line.starts_with(br#"{"type":"ADDED""#) {
                            s.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    let mut lat = Vec::with_capacity(a.objects);
    let t0 = Instant::now();
    for i in 0..a.objects {
        let obj = json!({"apiVersion": "example.tailor.dev/v1", "kind": "Bench", "metadata": {"name": format!("b{i:05}"), "labels": {"n": (i % 10).to_string()}}, "spec": {"size": i % 1000 + 1}});
        let t = Instant::now();
        let r = send(&mut c, conn.req("POST", base, Some(&obj))?).await?;
        let status = r.status();
        let _ = r.into_body().collect().await?;
        lat.push(t.elapsed());
        if !status.is_success() {
            bail!("create {i}: {status}");
        }
    }
    let create_total = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.iter().any(|s| s.load(Ordering::Relaxed) < a.objects) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_delivered = t0.elapsed();
    let delivered: Vec<usize> = seen.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    let mut get_lat = vec![];
    for i in (0..a.objects).step_by((a.objects / 200).max(1)) {
        let t = Instant::now();
        let r = send(&mut c, conn.req("GET", &format!("{base}/b{i:05}"), None)?).await?;
        let _ = r.into_body().collect().await?;
        get_lat.push(t.elapsed());
    }
    let mut list_lat = vec![];
    let mut listed = 0;
    for _ in 0..10 {
        let t = Instant::now();
        let r = send(&mut c, conn.req("GET", base, None)?).await?;
        let body = r.into_body().collect().await?.to_bytes();
        list_lat.push(t.elapsed());
        let v: Value = serde_json::from_slice(&body)?;
        listed = v["items"].as_array().map(|x| x.len()).unwrap_or(0);
    }
    let rss_after = rss_kib(pid);
    lat.sort();
    get_lat.sort();
    list_lat.sort();
    println!(
        "tailor-sim bench: {} custom objects (CRD schema + CEL admission), {} watchers, one client connection",
        a.objects, a.watchers
    );
    println!(
        "  create  p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({:.0} creates/s)",
        pct(&lat, 0.5),
        pct(&lat, 0.95),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        a.objects as f64 / create_total.as_secs_f64()
    );
    println!(
        "  get     p50 {:.2} ms  p95 {:.2} ms",
        pct(&get_lat, 0.5),
        pct(&get_lat, 0.95)
    );
    println!(
        "  list of {listed}: p50 {:.1} ms  max {:.1} ms",
        pct(&list_lat, 0.5),
        pct(&list_lat, 1.0)
    );
    println!(
        "  watch: every watcher saw {:?} ADDED events; all delivered {:.1} ms after the first create ({:.1} ms after the last)",
        delivered,
        all_delivered.as_secs_f64() * 1000.0,
        (all_delivered - create_total).as_secs_f64() * 1000.0
    );
    println!(
        "  memory (VmRSS of the simulator): {:.1} MiB before, {:.1} MiB after ({:.1} KiB per object)",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / a.objects as f64
    );
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    if delivered.iter().any(|d| *d < a.objects) || listed != a.objects {
        bail!("watch or list incomplete");
    }
    Ok(())
}
