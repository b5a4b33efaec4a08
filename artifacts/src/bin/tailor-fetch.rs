//! `tailor-fetch`: download an artifact URI into a directory (an init container's job), or
//! upload a directory to a URI.
//!
//! Credentials come from the standard variables of each store (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`, `HF_TOKEN`, `HF_ENDPOINT`) in this process's environment — in a pod, from the
//! Secret given with `envFrom`. On success a JSON summary goes to stdout; on failure one line
//! `error: <uri>: <Kind>: <cause>` goes to stderr and the exit code says the kind:
//! 3 invalid, 4 not found, 5 permission denied, 6 unreachable, 7 checksum mismatch,
//! 8 source changed, 9 local I/O (2: bad command line).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tailor_artifacts::{ArtifactUri, Context, Env, Error, ErrorKind, Fetcher, Store};

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Parser)]
#[command(
    name = "tailor-fetch",
    version,
    about = "Fetch an artifact URI (pvc, file, s3, gs, az, https, hf) into a directory, or upload a directory",
    after_help = "Examples:\n  tailor-fetch hf://Qwen/Qwen2.5-0.5B-Instruct /models/base --cache /var/cache/tailor\n  tailor-fetch s3://bucket/datasets/support/train.jsonl /data\n  tailor-fetch --upload ./adapter s3://bucket/adapters/support-v2\n\nExit codes: 0 ok, 2 usage, 3 invalid, 4 not found, 5 permission denied,\n6 unreachable, 7 checksum mismatch, 8 source changed, 9 local I/O."
)]
struct Cli {
    /// Download: the source URI. Upload (--upload): the destination URI.
    #[arg(value_name = "URI")]
    uri: String,
    /// Download only: the local directory to fill (created if missing).
    #[arg(value_name = "DEST", required_unless_present = "upload")]
    dest: Option<PathBuf>,
    /// Upload the files under this directory to URI instead of downloading.
    #[arg(long, value_name = "DIR", conflicts_with = "dest")]
    upload: Option<PathBuf>,
    /// Node-local cache directory: a source fetched before (same revision/ETags) is linked
    /// from here without transferring its bytes again; concurrent fetches wait for each other.
    #[arg(long, value_name = "DIR", env = "TAILOR_FETCH_CACHE")]
    cache: Option<PathBuf>,
    /// Ranged requests in flight at once, across all files.
    #[arg(long, default_value_t = 16, env = "TAILOR_FETCH_CONCURRENCY")]
    concurrency: usize,
    /// Size of each ranged request, in MiB.
    #[arg(
        long,
        default_value_t = 16,
        value_name = "MIB",
        env = "TAILOR_FETCH_CHUNK_MIB"
    )]
    chunk_mib: u64,
    /// Keep retrying failures that can heal (unreachable endpoint, cut connections, a source
    /// changed mid-fetch) with back-off for this many seconds; 0 disables retries.
    #[arg(
        long,
        default_value_t = 600,
        value_name = "SECONDS",
        env = "TAILOR_FETCH_RETRY_FOR"
    )]
    retry_for: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    progress_every: u64,
    /// Require this sha256 for a fetched file, as PATH=HEX (PATH relative to DEST); repeatable.
    #[arg(long, value_name = "PATH=HEX")]
    expect_sha256: Vec<String>,
    /// Where a PersistentVolumeClaim is mounted, as CLAIM=DIR (for pvc:// URIs); repeatable.
    #[arg(long, value_name = "CLAIM=DIR")]
    pvc_mount: Vec<String>,
    /// Log format: text for people, json for pods.
    #[arg(long, value_enum, default_value = "text", env = "TAILOR_LOG_FORMAT")]
    log_format: LogFormat,
}

fn pairs(flag: &str, values: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() && !val.is_empty() => {
                Ok((k.to_string(), val.to_string()))
            }
            _ => anyhow::bail!("--{flag} {v:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn run(cli: Cli) -> Result<serde_json::Value, Error> {
    let usage = |m: String| Error::plain(ErrorKind::Invalid, &cli.uri, m);
    let uri = ArtifactUri::parse(&cli.uri).map_err(|e| usage(e.reason))?;
    let mut ctx = Context::new(Env::from_process());
    ctx.pvc_mounts = pairs("pvc-mount", &cli.pvc_mount)
        .map_err(|e| usage(e.to_string()))?
        .into_iter()
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    if let Some(dir) = &cli.upload {
        let store = Store::open(&uri, &ctx)?;
        let started = std::time::Instant::now();
        let uploaded = store.upload_dir(dir, "").await?;
        let bytes: u64 = uploaded.iter().map(|u| u.size).sum();
        tracing::info!(uri = %uri, files = uploaded.len(), bytes, "uploaded");
        return Ok(serde_json::json!({
            "uri": uri.to_string(),
            "uploaded": uploaded.iter().map(|u| serde_json::json!({
                "path": u.path, "size": u.size, "sha256": u.sha256
            })).collect::<Vec<_>>(),
            "bytes": bytes,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    let mut fetcher = Fetcher::new(ctx)
        .with_cache(cli.cache.clone())
        .with_concurrency(cli.concurrency)
        .with_chunk_size(cli.chunk_mib.max(1) << 20)
        .with_retry_for(Duration::from_secs(cli.retry_for))
        .with_progress_every(Duration::from_secs(cli.progress_every.max(1)));
    for (path, sha) in
        pairs("expect-sha256", &cli.expect_sha256).map_err(|e| usage(e.to_string()))?
    {
        fetcher = fetcher.expect_sha256(path, sha);
    }
    let fetched = fetcher.fetch(&uri, cli.dest.as_deref()).await?;
    serde_json::to_value(&fetched).map_err(|e| usage(e.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(ErrorKind::Local.exit_code());
        }
    };
    match rt.block_on(run(cli)) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(uri = %e.uri, kind = e.kind.as_str(), message = %e.message, "failed");
            eprintln!("error: {e}");
            ExitCode::from(e.kind.exit_code())
        }
    }
}
