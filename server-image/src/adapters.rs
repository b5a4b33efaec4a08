//! Known adapters (name → PEFT directory) and the LRU-bounded set of loaded ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use tailor_model::{LoraAdapter, ModelConfig, peft};
use tch::Device;

/// Where an adapter name came from: config-file entries are replaced on each reload, the others
/// stay until deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cli,
    Config,
    Admin,
}

#[derive(Debug, Clone)]
struct Known {
    path: PathBuf,
    source: Source,
    error: Option<String>,
}

/// One entry of `GET /admin/adapters`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdapterStatus {
    pub name: String,
    pub path: String,
    pub loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct Inner {
    known: BTreeMap<String, Known>,
    /// name → (adapter, id, last use).
    loaded: HashMap<String, (LoraAdapter, u64, u64)>,
    tick: u64,
    next_id: u64,
    max_loaded: usize,
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Serialises loads so one adapter is never read twice at once.
    load_lock: tokio::sync::Mutex<()>,
    config: ModelConfig,
    device: Device,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("unknown adapter {0}")]
    Unknown(String),
    #[error("{0}")]
    Load(String),
}

/// Loads a PEFT adapter for `config`, refusing one trained for another base model.
pub fn load_for_base(
    dir: &Path,
    config: &ModelConfig,
    device: Device,
) -> Result<LoraAdapter, String> {
    let adapter = peft::load_adapter(dir, config, device)
        .map_err(|e| format!("cannot load adapter {}: {e}", dir.display()))?;
    // `base_model_name_or_path` is meaningful when it names a local checkpoint directory: its
    // config must be the served model's.
    let cfg_path = dir.join(peft::CONFIG_FILE);
    let base: Option<String> = std::fs::read(&cfg_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("base_model_name_or_path")?
                .as_str()
                .map(str::to_string)
        });
    if let Some(base) = base {
        let base_dir = if Path::new(&base).is_absolute() {
            PathBuf::from(&base)
        } else {
            dir.join(&base)
        };
        if base_dir.join("config.json").is_file()
            && let Ok(theirs) = ModelConfig::from_dir(&base_dir)
            && theirs != *config
        {
            return Err(format!(
                "adapter {} was trained for base model {base}, whose config differs from the served model's: the adapter is for a different base model",
                dir.display()
            ));
        }
    }
    Ok(adapter)
}

impl Registry {
    pub fn new(config: ModelConfig, device: Device, max_loaded: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max_loaded: max_loaded.max(1),
                ..Inner::default()
            }),
            load_lock: tokio::sync::Mutex::new(()),
            config,
            device,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_max_loaded(&self, n: usize) {
        let mut g = self.lock();
        g.max_loaded = n.max(1);
        evict(&mut g, None);
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.lock().known.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().known.keys().cloned().collect()
    }

    pub fn max_loaded(&self) -> usize {
        self.lock().max_loaded
    }

    pub fn loaded_count(&self) -> usize {
        self.lock().loaded.len()
    }

    pub fn status(&self) -> Vec<AdapterStatus> {
        let g = self.lock();
        g.known
            .iter()
            .map(|(name, k)| AdapterStatus {
                name: name.clone(),
                path: k.path.display().to_string(),
                loaded: g.loaded.contains_key(name),
                error: k.error.clone(),
            })
            .collect()
    }

    /// Registers (or re-points) a name; a changed path unloads the old weights.
    pub fn register(&self, name: &str, path: PathBuf, source: Source) {
        let mut g = self.lock();
        if let Some(k) = g.known.get_mut(name)
            && k.path == path
        {
            k.source = source;
            return;
        }
        g.loaded.remove(name);
        g.known.insert(
            name.to_string(),
            Known {
                path,
                source,
                error: None,
            },
        );
    }

    /// Forgets a name and unloads it; false when it was not known.
    pub fn remove(&self, name: &str) -> bool {
        let mut g = self.lock();
        g.loaded.remove(name);
        g.known.remove(name).is_some()
    }

    /// Replaces the config-file adapters by `adapters`.
    pub fn replace_config(&self, adapters: &BTreeMap<String, PathBuf>) {
        let stale: Vec<String> = {
            let g = self.lock();
            g.known
                .iter()
                .filter(|(n, k)| k.source == Source::Config && !adapters.contains_key(*n))
                .map(|(n, _)| n.clone())
                .collect()
        };
        for n in stale {
            self.remove(&n);
        }
        for (n, p) in adapters {
            self.register(n, p.clone(), Source::Config);
        }
    }

    /// A handle on the loaded adapter and its id (unique per load), loading it from its known
    /// path if need be (LRU-evicting others).
    pub async fn get(&self, name: &str) -> Result<(u64, LoraAdapter), LookupError> {
        if let Some(a) = self.touch(name)? {
            return Ok(a);
        }
        let _load = self.load_lock.lock().await;
        let path = match self.touch(name)? {
            Some(a) => return Ok(a),
            None => self
                .lock()
                .known
                .get(name)
                .map(|k| k.path.clone())
                .ok_or_else(|| LookupError::Unknown(name.to_string()))?,
        };
        let config = self.config.clone();
        let device = self.device;
        let p = path.clone();
        let result = tokio::task::spawn_blocking(move || load_for_base(&p, &config, device))
            .await
            .map_err(|e| LookupError::Load(format!("adapter load task failed: {e}")))?;
        let mut g = self.lock();
        // The name may have been removed or re-pointed while loading.
        let current = g.known.get(name).map(|k| k.path.clone());
        if current.as_ref() != Some(&path) {
            return Err(LookupError::Unknown(name.to_string()));
        }
        match result {
            Ok(adapter) => {
                g.tick += 1;
                g.next_id += 1;
                let (tick, id) = (g.tick, g.next_id);
                let handle = adapter.shallow_clone();
                g.loaded.insert(name.to_string(), (adapter, id, tick));
                if let Some(k) = g.known.get_mut(name) {
                    k.error = None;
                }
                evict(&mut g, Some(name));
                tracing::info!(adapter = name, path = %path.display(), "adapter loaded");
                Ok((id, handle))
            }
            Err(e) => {
                if let Some(k) = g.known.get_mut(name) {
                    k.error = Some(e.clone());
                }
                tracing::warn!(adapter = name, error = %e, "adapter load failed");
                Err(LookupError::Load(e))
            }
        }
    }

    fn touch(&self, name: &str) -> Result<Option<(u64, LoraAdapter)>, LookupError> {
        let mut g = self.lock();
        if !g.known.contains_key(name) {
            return Err(LookupError::Unknown(name.to_string()));
        }
        g.tick += 1;
        let tick = g.tick;
        Ok(g.loaded.get_mut(name).map(|e| {
            e.2 = tick;
            (e.1, e.0.shallow_clone())
        }))
    }
}

fn evict(g: &mut Inner, keep: Option<&str>) {
    while g.loaded.len() > g.max_loaded {
        let victim = g
            .loaded
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != keep)
            .min_by_key(|(_, e)| e.2)
            .map(|(n, _)| n.clone());
        match victim {
            Some(v) => {
                tracing::info!(adapter = %v, "adapter evicted (LRU)");
                g.loaded.remove(&v);
            }
            None => break,
        }
    }
}
