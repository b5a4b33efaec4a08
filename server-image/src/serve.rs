//! Startup, the config-file watcher and graceful shutdown.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tailor_model::{CausalLm, ModelConfig, Tokenizer};
use tch::{Device, Kind};
use tokio::sync::mpsc;

use crate::adapters::{Registry, Source};
use crate::app::{AppState, router};
use crate::config::{Cli, FaultInjection, FileConfig};
use crate::engine::{Engine, EngineStats};
use crate::metrics::Metrics;

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

fn read_keys(path: &Path) -> anyhow::Result<HashSet<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read API key file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
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
    let fault = fc.fault_injection.clone().unwrap_or(FaultInjection {
        error_rate: cli.fault_error_rate,
        adapters: cli.fault_adapters.clone(),
    });
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
async fn watch(state: Arc<AppState>, cli: Cli, mut last_config: Option<Vec<u8>>) {
    let mut last_keys: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(cli.config_poll_ms.max(50)));
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
        if let Some(path) = &cli.api_key_file
            && let Ok(bytes) = std::fs::read(path)
            && Some(&bytes) != last_keys.as_ref()
        {
            match read_keys(path) {
                Ok(keys) => {
                    if let Ok(mut k) = state.api_keys.write() {
                        *k = Some(keys);
                    }
                }
                Err(e) => tracing::error!(error = %e, "API key file reload rejected"),
            }
            last_keys = Some(bytes);
        }
    }
}

async fn shutdown_signal(state: Arc<AppState>) {
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
    tracing::info!("shutdown signal: draining in-flight requests");
    state.draining.store(true, Ordering::Relaxed);
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let (device, kind) = device_and_kind(&cli)?;
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
    ));
    for (n, p) in cli.adapter_pairs()? {
        registry.register(&n, p, Source::Cli);
    }
    let mut file_config = None;
    let mut config_bytes = None;
    if let Some(path) = &cli.config {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        file_config = Some(FileConfig::parse(&bytes, path)?);
        config_bytes = Some(bytes);
    }
    let api_keys = match &cli.api_key_file {
        Some(p) => Some(read_keys(p)?),
        None => None,
    };
    let mut eos: Vec<i64> = model_config.eos_token_ids.clone();
    if let Some(e) = tokenizer.eos_token_id() {
        eos.push(i64::from(e));
    }
    eos.sort();
    eos.dedup();

    let stats = Arc::new(EngineStats::default());
    let (tx, rx) = mpsc::channel(4096);
    let state = Arc::new(AppState {
        served_name: RwLock::new(served.clone()),
        registry,
        tokenizer,
        template,
        engine: tx,
        stats: stats.clone(),
        metrics: Metrics::new(),
        max_seq,
        max_body: cli.max_body_bytes,
        api_keys: RwLock::new(api_keys),
        fault: RwLock::new(FaultInjection {
            error_rate: cli.fault_error_rate,
            adapters: cli.fault_adapters.clone(),
        }),
        draining: AtomicBool::new(false),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    if let Some(fc) = &file_config {
        apply_config(&state, &cli, fc);
    }
    if state.fault.read().is_ok_and(|f| f.error_rate > 0.0) {
        tracing::warn!("TEST-ONLY fault injection is enabled");
    }

    let model_dir: PathBuf = cli.model.clone();
    let max_batch = cli.max_batch_size.max(1);
    let engine_stats = stats.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let model = match CausalLm::load(&model_dir, kind, device) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "cannot load the base model");
                    std::process::exit(1);
                }
            };
            tracing::info!(model = %model_dir.display(), ?device, ?kind, "base model loaded");
            engine_stats.ready.store(true, Ordering::Relaxed);
            Engine {
                model,
                eos,
                max_batch,
                max_seq,
                stats: engine_stats,
            }
            .run(rx);
        })?;
    if let Some(fc) = &file_config {
        preload(&state, fc);
    }
    tokio::spawn(watch(state.clone(), cli.clone(), config_bytes));

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(listen = %listener.local_addr()?, served = %served, "tailor-server listening");
    let drain = Duration::from_secs(cli.drain_timeout_secs);
    let (sig_tx, sig_rx) = tokio::sync::oneshot::channel::<()>();
    let sig_state = state.clone();
    tokio::spawn(async move {
        shutdown_signal(sig_state).await;
        let _ = sig_tx.send(());
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router(state.clone())).with_graceful_shutdown(async move {
        let _ = sig_rx.await;
        let _ = stop_tx.send(true);
    });
    let mut stop_rx2 = stop_rx.clone();
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = stop_rx2.wait_for(|v| *v).await;
            tokio::time::sleep(drain).await;
        } => tracing::warn!("drain timeout: exiting with requests in flight"),
    }
    drop(stop_rx);
    tracing::info!("tailor-server stopped");
    Ok(())
}
