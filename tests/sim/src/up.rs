//! `tailor-sim up`: the HTTPS server, controllers, scheduler and kubelet of one simulated cluster.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::cluster::{Cluster, Config};
use crate::{controllers, kubeconfig, kubelet, resources, scheduler, server, store, tls};

#[derive(clap::Parser, Clone, Debug)]
pub struct UpArgs {
    /// Directory for the object store, certificates, pod directories and volumes (kept across restarts).
    #[arg(long, env = "TAILOR_SIM_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Where to write the admin kubeconfig.
    #[arg(long, env = "TAILOR_SIM_KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Number of simulated nodes (sim-node-1 ... sim-node-N).
    #[arg(long, default_value_t = 2, env = "TAILOR_SIM_NODES")]
    pub nodes: u32,
    /// nvidia.com/gpu capacity of each node.
    #[arg(long, default_value_t = 2, env = "TAILOR_SIM_GPUS_PER_NODE")]
    pub gpus_per_node: u32,
    /// cpu capacity of each node.
    #[arg(long, default_value = "16")]
    pub cpu_per_node: String,
    /// memory capacity of each node.
    #[arg(long, default_value = "64Gi")]
    pub memory_per_node: String,
    /// Map a container image to a local binary: NAME=PATH (NAME may omit the tag). Repeatable.
    #[arg(long = "image", value_name = "NAME=PATH")]
    pub images: Vec<String>,
    /// Address to serve on (a loopback address; pods reach the API here).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: Ipv4Addr,
    /// Port to serve on; 0 reuses the previous port of this state dir, or picks a free one.
    #[arg(long, default_value_t = 0, env = "TAILOR_SIM_PORT")]
    pub port: u16,
    /// How many recent changes a watch can resume from before it gets 410 Gone.
    #[arg(long, default_value_t = 10000)]
    pub watch_window: usize,
    /// Second octet of the loopback range for pod and Service IPs (default: random, kept in the state dir).
    #[arg(long)]
    pub net: Option<u8>,
    /// At shutdown, how long pods get between SIGTERM and SIGKILL (each pod's own
    /// terminationGracePeriodSeconds if shorter), as a kubelet's shutdownGracePeriod.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,
}

/// `500ms`, `2s`, `1m` (the units of Kubernetes durations tailor-sim needs).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 2s or 1m, got {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!(
            "expected a duration like 500ms, 2s or 1m, got {s:?}"
        )),
    }
}

fn read_or_create(path: &std::path::Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    if path.exists() {
        return Ok(std::fs::read_to_string(path)?.trim().to_string());
    }
    let v = make();
    std::fs::write(path, &v)?;
    Ok(v)
}

/// A random 127.N.0.0/16 range that no listening socket on this machine uses yet, so several
/// simulators (parallel tests) do not hand out the same pod and Service IPs.
fn free_net_octet() -> String {
    let mut used = std::collections::BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/udp"] {
        for line in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let Some(local) = line.split_whitespace().nth(1) else {
                continue;
            };
            let Some(ip) = local
                .split(':')
                .next()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            // /proc/net/tcp shows IPv4 addresses in host (little-endian) order.
            let b = ip.to_le_bytes();
            if b[0] == 127 {
                used.insert(b[1]);
            }
        }
    }
    for _ in 0..1000 {
        let n = 2 + rand::random::<u8>() % 250;
        if !used.contains(&n) {
            return n.to_string();
        }
    }
    (2 + rand::random::<u8>() % 250).to_string()
}

/// Serve a simulated cluster until `shutdown` resolves, then stop its pods and save its state.
/// `tailor-sim up` runs this until SIGTERM/SIGINT; tests can run it in-process.
pub async fn up(
    args: UpArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    let mut images = BTreeMap::new();
    for m in &args.images {
        let Some((name, path)) = m.split_once('=') else {
            bail!("--image expects NAME=PATH, got {m:?}")
        };
        let p = std::fs::canonicalize(path)
            .with_context(|| format!("--image {name}: {path} does not exist"))?;
        images.insert(name.to_string(), p);
    }
    let port_file = state_dir.join("port");
    let preferred = if args.port != 0 {
        args.port
    } else {
        std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::new(args.host.into(), preferred)).await {
            Ok(l) => l,
            Err(_) if args.port == 0 => {
                tokio::net::TcpListener::bind(SocketAddr::new(args.host.into(), 0)).await?
            }
            Err(e) => return Err(e).context("binding the API port"),
        };
    let port = listener.local_addr()?.port();
    std::fs::write(&port_file, port.to_string())?;
    let tls = tls::setup(&state_dir, &args.host.to_string())?;
    let admin_token = read_or_create(&state_dir.join("admin-token"), || {
        hex::encode(rand::random::<[u8; 24]>())
    })?;
    let key = read_or_create(&state_dir.join("token.key"), || {
        hex::encode(rand::random::<[u8; 32]>())
    })?;
    let net: u8 = match args.net {
        Some(n) => n,
        None => read_or_create(&state_dir.join("net"), free_net_octet)?
            .parse()
            .context("state dir net file")?,
    };
    let store = store::Store::new(Some(state_dir.join("objects.json")), args.watch_window)?;
    let cfg = Config {
        state_dir: state_dir.clone(),
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        cpu_per_node: args.cpu_per_node.clone(),
        memory_per_node: args.memory_per_node.clone(),
        images,
        host: args.host,
        port,
        net,
    };
    let cluster = Arc::new(Cluster::new(
        resources::Registry::new(),
        store,
        cfg,
        tls.ca_pem.clone(),
        key.into_bytes(),
        admin_token.clone(),
    ));
    controllers::crd::reconcile_all(&cluster);
    controllers::bootstrap::bootstrap(&cluster);
    controllers::start(&cluster);
    controllers::spawn_loop(
        cluster.clone(),
        "scheduler",
        Duration::from_millis(300),
        scheduler::reconcile,
    );
    kubelet::process::kill_recorded_containers(&state_dir, true);
    let kl = kubelet::Kubelet::new(cluster.clone());
    kl.start();
    {
        let c = cluster.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let store = c.clone();
                match tokio::task::spawn_blocking(move || store.store.persist()).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "persisting state"),
                    Err(e) => tracing::warn!(error = %e, "persisting state"),
                    Ok(Ok(())) => {}
                }
            }
        });
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let server_url = format!("https://{}:{port}", args.host);
    kubeconfig::write(&args.kubeconfig, &server_url, &tls.ca_pem, &admin_token)?;
    println!(
        "tailor-sim ready: {server_url} kubeconfig={}",
        args.kubeconfig.display()
    );
    tracing::info!(server = %server_url, nodes = args.nodes, gpus_per_node = args.gpus_per_node, "tailor-sim serving");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => {
                let Ok((tcp, _)) = acc else { continue };
                let acceptor = acceptor.clone();
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req| server::handle(cluster.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        }
    }
    tracing::info!("shutting down: stopping pods and saving state");
    let started = std::time::Instant::now();
    // New connections are refused from here on, not left waiting for an answer.
    drop(listener);
    // As a node going down: the controllers stop first and the pods' last reported state is
    // kept, so nothing reacts to the processes being killed (no pod marked failed by the
    // shutdown, no replacement for it). The next start picks the pods up as after a reboot.
    let c = cluster.clone();
    let stuck =
        tokio::task::spawn_blocking(move || c.halt_controllers(Duration::from_secs(5))).await?;
    if !stuck.is_empty() {
        tracing::warn!(controllers = ?stuck, "controllers still in a pass after 5s; shutting down without waiting for them");
    }
    // Each step is logged: a shutdown the watchdog has to end says where it stopped.
    tracing::info!(elapsed = ?started.elapsed(), "controllers halted");
    kl.flush_status();
    tracing::info!(elapsed = ?started.elapsed(), "pod status flushed");
    kl.shutdown(args.shutdown_grace_period).await;
    tracing::info!(elapsed = ?started.elapsed(), "pods stopped");
    cluster.store.persist()?;
    tracing::info!(elapsed = ?started.elapsed(), "stopped");
    Ok(())
}
