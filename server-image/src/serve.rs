//! Startup, the config-file watcher and graceful shutdown.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tailor_model::{CausalLm, ModelConfig, Tokenizer};
use tch::{Device, Kind};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::adapters::{Registry, Source};
use crate::config::{Cli, FileConfig};
use crate::connections::{self, Limits};
use crate::engine::{Engine, EngineStats, panic_message};
use crate::health::EngineHealth;
use crate::http::{ApiKeys, AppState, app};
use crate::metrics::Metrics;
use crate::remote::RemoteAdapters;

fn device_and_kind(cli: &Cli) -> anyhow::Result<(Device, Kind)> {
    let device = tailor_model::parse_device(&cli.device).context("--device")?;
    let kind = match cli.dtype.as_str() {
        "auto" if device.is_cuda() => Kind::BFloat16,
        "auto" | "f32" | "float32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" => Kind::Half,
        other => anyhow::bail!("--dtype {other:?}: expected auto, f32, bf16 or f16"),
    };
    Ok((device, kind))
}

/// The API key file; errors name the file, never its content.
fn read_keys(path: &Path) -> anyhow::Result<ApiKeys> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read API key file {}", path.display()))?;
    let keys = ApiKeys::parse(&text);
    if keys.is_empty() {
        tracing::warn!(path = %path.display(), "the API key file holds no key: every authenticated request is refused");
    }
    Ok(keys)
}

/// Applies a (re)loaded config file.
fn apply_config(state: &AppState, cli: &Cli, fc: &FileConfig) {
    if let Some(name) = &fc.served_model_name
        && let Ok(mut s) = state.served_name.write()
    {
        *s = name.clone();
    }
    state.registry.replace_config(&fc.adapters);
    state
        .registry
        .set_max_loaded(fc.max_loaded_adapters.unwrap_or(cli.max_loaded_adapters));
    let fault = fc.fault_injection.clone().unwrap_or_else(|| cli.fault());
    state
        .engine_panic_at_step
        .store(fault.engine_panic_at_step.unwrap_or(0), Ordering::Relaxed);
    if fault.error_rate > 0.0
        || fault.engine_panic_at_step.is_some()
        || !fault.fixed_responses.is_empty()
    {
        tracing::warn!(?fault, "TEST-ONLY fault injection is enabled");
    }
    if let Ok(mut f) = state.fault.write() {
        *f = fault;
    }
}

/// Loads (in the background) the config file's adapters, so `/admin/adapters` shows their state.
fn preload(state: &Arc<AppState>, fc: &FileConfig) {
    let names: Vec<String> = fc.adapters.keys().cloned().collect();
    let state = state.clone();
    tokio::spawn(async move {
        for n in names {
            if state.registry.loaded_count() >= state.registry.max_loaded() {
                break;
            }
            let _ = state.registry.get(&n).await;
        }
    });
}

/// Polls the config and API key files; a changed content is applied (symlink swaps included,
/// since the path is re-resolved on every read). An invalid file keeps the previous config.
async fn watch_files(state: Arc<AppState>, cli: Cli, mut last_config: Option<Vec<u8>>) {
    let mut last_keys: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(cli.config_poll_interval.max(Duration::from_millis(50)));
    loop {
        tick.tick().await;
        if let Some(path) = &cli.config {
            match std::fs::read(path) {
                Ok(bytes) if Some(&bytes) != last_config.as_ref() => {
                    match FileConfig::parse(&bytes, path) {
                        Ok(fc) => {
                            apply_config(&state, &cli, &fc);
                            preload(&state, &fc);
                            tracing::info!(path = %path.display(), adapters = fc.adapters.len(), "config reloaded");
                        }
                        Err(e) => tracing::error!(error = %e, "config reload rejected"),
                    }
                    last_config = Some(bytes);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read config"),
            }
        }
        if let Some(path) = &cli.api_key_file {
            match std::fs::read(path) {
                Ok(bytes) if Some(&bytes) != last_keys.as_ref() => {
                    let keys = ApiKeys::parse(&String::from_utf8_lossy(&bytes));
                    if last_keys.is_some() {
                        tracing::info!(path = %path.display(), keys = keys.len(), "API key file reloaded");
                    }
                    if let Ok(mut k) = state.api_keys.write() {
                        *k = Some(keys);
                    }
                    last_keys = Some(bytes);
                }
                Ok(_) => {}
                // The previous keys stay in force.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the API key file")
                }
            }
        }
    }
}

/// A started server: its state, the config file as read at start, and a channel that fires if
/// the base model cannot be loaded.
pub struct Started {
    pub state: Arc<AppState>,
    pub file_config: Option<(FileConfig, Vec<u8>)>,
    pub load_failed: oneshot::Receiver<String>,
}

/// Reads the configuration, builds the state and starts the engine thread (which loads the base
/// model; `/ready` turns green when it is done).
pub fn start(cli: &Cli) -> anyhow::Result<Started> {
    let (device, kind) = device_and_kind(cli)?;
    if cli.threads > 0 {
        tch::set_num_threads(cli.threads);
    }
    let model_config = ModelConfig::from_dir(&cli.model)?;
    let tokenizer = Arc::new(Tokenizer::from_dir(&cli.model)?);
    let template = tokenizer.chat_template()?;
    let served = cli.served_model_name.clone().unwrap_or_else(|| {
        cli.model
            .canonicalize()
            .unwrap_or_else(|_| cli.model.clone())
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().to_string())
    });
    let max_seq = cli
        .max_seq_length
        .unwrap_or(model_config.max_position_embeddings as usize);
    let registry = Arc::new(Registry::new(
        model_config.clone(),
        device,
        cli.max_loaded_adapters,
        cli.adapter_load_timeout,
    ));
    registry.set_roots(&cli.adapter_roots);
    let remote = Arc::new(RemoteAdapters::new(
        cli.adapter_uri_prefixes.clone(),
        cli.adapter_cache
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("tailor-adapters")),
        cli.adapter_load_timeout,
    ));
    registry.set_fetched_root(remote.cache_dir());
    registry.set_remote(remote.clone());
    for (n, p) in cli.adapter_pairs()? {
        registry.register(&n, p, Source::Cli);
    }
    let file_config = match &cli.config {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            Some((FileConfig::parse(&bytes, path)?, bytes))
        }
        None => None,
    };
    let api_keys = match (
        &cli.api_key_file,
        cli.vllm.as_ref().and_then(|v| v.api_key.as_ref()),
    ) {
        (Some(p), _) => Some(read_keys(p)?),
        (None, Some(key)) => Some(ApiKeys::parse(key)),
        (None, None) => None,
    };
    let mut eos: Vec<i64> = model_config.eos_token_ids.clone();
    if let Some(e) = tokenizer.eos_token_id() {
        eos.push(i64::from(e));
    }
    eos.sort();
    eos.dedup();

    let stats = Arc::new(EngineStats::default());
    let health = Arc::new(EngineHealth::new(cli.engine_failure_grace));
    let max_batch = cli.max_batch_size.max(1);
    let (tx, rx) = mpsc::channel(4096);
    let state = Arc::new(AppState {
        served_name: RwLock::new(served),
        model_dir: cli.model.clone(),
        registry,
        remote,
        tokenizer,
        template,
        engine: tx,
        stats: stats.clone(),
        health: health.clone(),
        metrics: Metrics::new(),
        max_seq,
        max_batch,
        max_body: cli.max_body_bytes,
        body_read_timeout: cli.body_read_timeout,
        in_flight: Arc::new(Semaphore::new(cli.max_in_flight.max(1))),
        api_keys: RwLock::new(api_keys),
        fault: RwLock::new(cli.fault()),
        engine_panic_at_step: Arc::new(AtomicU64::new(0)),
        fixed_served: std::sync::atomic::AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        vllm: cli.vllm.clone(),
    });
    apply_config(
        &state,
        cli,
        &file_config
            .as_ref()
            .map(|f| f.0.clone())
            .unwrap_or_default(),
    );

    let (failed_tx, load_failed) = oneshot::channel();
    let model_dir: PathBuf = cli.model.clone();
    let panic_at_step = state.engine_panic_at_step.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let loaded = catch_unwind(AssertUnwindSafe(|| {
                CausalLm::load(&model_dir, kind, device)
            }));
            let model = match loaded {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    health.died(format!("cannot load the base model: {e}"));
                    let _ = failed_tx.send(e.to_string());
                    return;
                }
                Err(p) => {
                    let why = panic_message(p.as_ref());
                    health.died(format!("cannot load the base model: {why}"));
                    let _ = failed_tx.send(why);
                    return;
                }
            };
            tracing::info!(model = %model_dir.display(), ?device, ?kind, "base model loaded");
            health.serving();
            Engine {
                model,
                eos,
                max_batch,
                max_seq,
                stats,
                health: health.clone(),
                panic_at_step,
            }
            .run(rx);
            health.died("the engine stopped");
        })?;
    Ok(Started {
        state,
        file_config,
        load_failed,
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Started {
        state,
        file_config,
        mut load_failed,
    } = start(&cli)?;
    if let Some((fc, _)) = &file_config {
        preload(&state, fc);
    }
    tokio::spawn(watch_files(
        state.clone(),
        cli.clone(),
        file_config.map(|(_, bytes)| bytes),
    ));

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(listen = %listener.local_addr()?, served = %state.served_name(), "tailor-server listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let sig_state = state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal: draining in-flight requests");
        sig_state.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    });
    let limits = Limits {
        header_read: cli.header_read_timeout,
        idle: cli.idle_timeout,
        max_connections: cli.max_connections,
    };
    let mut draining = stop_rx.clone();
    tokio::select! {
        _ = connections::serve(listener, app(state.clone()), limits, stop_rx) => {}
        _ = async {
            let _ = draining.wait_for(|v| *v).await;
            tokio::time::sleep(cli.drain_timeout).await;
        } => tracing::warn!("drain timeout: exiting with requests in flight"),
        Ok(why) = &mut load_failed => anyhow::bail!("cannot load the base model: {why}"),
    }
    tracing::info!("tailor-server stopped");
    Ok(())
}
