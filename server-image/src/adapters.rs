//! Known adapters (name → PEFT directory) and the LRU-bounded set of loaded ones.
//!
//! Loads asked for through the API are confined to the adapter roots: a path that resolves
//! (symlinks and `..` included) outside every root gets the same answer as a path with nothing
//! there, so a caller learns nothing about the pod's filesystem. The adapter's files must be
//! regular files — checked before anything opens them, so a FIFO cannot hang a load. Each load
//! runs on a blocking thread under its own timeout, and only loads of the same name wait for
//! each other: a slow load never holds up other adapters or the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tailor_model::{LoraAdapter, ModelConfig, peft};
use tailor_wire::server::AdapterStatus;
use tch::Device;

use crate::engine::AdapterRef;

/// Where an adapter name came from: config-file entries are replaced on each reload, the others
/// stay until deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cli,
    Config,
    Api,
}

#[derive(Debug, Clone)]
struct Known {
    path: PathBuf,
    source: Source,
    error: Option<String>,
}

struct Loaded {
    weights: LoraAdapter,
    id: u64,
    last_use: u64,
}

#[derive(Default)]
struct Inner {
    known: BTreeMap<String, Known>,
    loaded: HashMap<String, Loaded>,
    tick: u64,
    next_id: u64,
    max_loaded: usize,
    /// `--adapter-root`; when empty, `derived_roots` apply.
    roots: Vec<PathBuf>,
    /// The directories holding the CLI's and the config file's adapters.
    derived_roots: Vec<PathBuf>,
    /// Where adapters loaded by URI are fetched to: always a root.
    fetched_root: Option<PathBuf>,
}

/// Reads an adapter directory into weights (the real one: [`load_for_base`]).
pub type Loader = Arc<dyn Fn(&Path) -> Result<LoraAdapter, String> + Send + Sync>;

pub struct Registry {
    inner: Mutex<Inner>,
    /// One lock per name: the same adapter is never read twice at once.
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    loader: Loader,
    load_timeout: Duration,
    /// Fetches the adapters known by URI (the config file's `s3://…`, `hf://…` entries).
    remote: Mutex<Option<Arc<crate::remote::RemoteAdapters>>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// Outside the adapter roots, or no adapter there: one answer for both.
    #[error("No adapter found for {0}")]
    NotFound(String),
    /// An adapter directory under a root that cannot be loaded.
    #[error("{0}")]
    Invalid(String),
    #[error("loading the adapter took longer than {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LookupError {
    #[error("unknown adapter {0}")]
    Unknown(String),
    #[error("{0}")]
    Load(LoadError),
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

/// Whether `path` (canonical) lies under one of `roots` (canonical).
fn under(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

/// The checks before an API load: the directory and the files PEFT reads resolve inside the
/// roots and are a directory and regular files. Nothing is opened for reading.
pub fn check_adapter_dir(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, LoadError> {
    let not_found = || LoadError::NotFound(path.display().to_string());
    let dir = path.canonicalize().map_err(|_| not_found())?;
    if !under(&dir, roots) || !dir.is_dir() {
        return Err(not_found());
    }
    for name in [peft::CONFIG_FILE, peft::WEIGHTS_FILE] {
        let file = dir.join(name).canonicalize().map_err(|_| not_found())?;
        if !under(&file, roots) {
            return Err(not_found());
        }
        let meta = std::fs::metadata(&file).map_err(|_| not_found())?;
        if !meta.file_type().is_file() {
            return Err(LoadError::Invalid(format!(
                "{}: {name} is not a regular file",
                path.display()
            )));
        }
    }
    Ok(dir)
}

impl Registry {
    pub fn new(
        config: ModelConfig,
        device: Device,
        max_loaded: usize,
        load_timeout: Duration,
    ) -> Self {
        let loader: Loader = Arc::new(move |dir| load_for_base(dir, &config, device));
        Self::with_loader(loader, max_loaded, load_timeout)
    }

    pub fn with_loader(loader: Loader, max_loaded: usize, load_timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max_loaded: max_loaded.max(1),
                ..Inner::default()
            }),
            loading: Mutex::new(HashMap::new()),
            loader,
            load_timeout,
            remote: Mutex::new(None),
        }
    }

    /// What fetches adapters known by URI; without it they fail to load, saying so.
    pub fn set_remote(&self, remote: Arc<crate::remote::RemoteAdapters>) {
        *self.remote.lock().unwrap_or_else(|e| e.into_inner()) = Some(remote);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `--adapter-root` directories (those that exist; canonical).
    pub fn set_roots(&self, roots: &[PathBuf]) {
        let roots: Vec<PathBuf> = roots
            .iter()
            .filter_map(|r| match r.canonicalize() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(root = %r.display(), error = %e, "adapter root skipped");
                    None
                }
            })
            .collect();
        self.lock().roots = roots;
    }

    /// The directory adapters fetched by URI go to (created; canonical).
    pub fn set_fetched_root(&self, dir: &Path) {
        match std::fs::create_dir_all(dir).and_then(|()| dir.canonicalize()) {
            Ok(c) => self.lock().fetched_root = Some(c),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "the adapter cache cannot be used: loads by URI will fail");
            }
        }
    }

    /// The roots API loads are confined to.
    pub fn roots(&self) -> Vec<PathBuf> {
        let g = self.lock();
        let mut roots = if g.roots.is_empty() {
            g.derived_roots.clone()
        } else {
            g.roots.clone()
        };
        roots.extend(g.fetched_root.clone());
        roots
    }

    fn derive_roots(g: &mut Inner) {
        let mut roots: Vec<PathBuf> = g
            .known
            .values()
            .filter(|k| k.source != Source::Api)
            .filter_map(|k| k.path.canonicalize().ok())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        roots.sort();
        roots.dedup();
        g.derived_roots = roots;
    }

    pub fn set_max_loaded(&self, n: usize) {
        let mut g = self.lock();
        g.max_loaded = n.max(1);
        evict(&mut g, None);
    }

    /// Whether `name` is listed (see [`Registry::listed`]).
    pub fn is_listed(&self, name: &str) -> bool {
        self.lock()
            .known
            .get(name)
            .is_some_and(|k| k.error.is_none())
    }

    /// Adapters and their directories, by name, as `/v1/models` lists them: those that loaded
    /// (in memory or evicted, to be reloaded on demand), not those whose load failed. vLLM
    /// registers an adapter only once it loaded; a client (the operator) takes an adapter that
    /// is not listed for one to load.
    pub fn listed(&self) -> Vec<(String, PathBuf)> {
        self.lock()
            .known
            .iter()
            .filter(|(_, k)| k.error.is_none())
            .map(|(n, k)| (n.clone(), k.path.clone()))
            .collect()
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
        match g.known.get_mut(name) {
            Some(k) if k.path == path => k.source = source,
            _ => {
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
        }
        Self::derive_roots(&mut g);
    }

    /// Forgets a name and unloads it; false when it was not known.
    pub fn remove(&self, name: &str) -> bool {
        let mut g = self.lock();
        g.loaded.remove(name);
        let was = g.known.remove(name).is_some();
        Self::derive_roots(&mut g);
        drop(g);
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if loading.get(name).is_some_and(|l| Arc::strong_count(l) == 1) {
            loading.remove(name);
        }
        was
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

    /// Registers `name` at `path` through the API (the path confined to the roots) and loads
    /// it now. A failed load leaves the previous registration of the name, if any, in place.
    pub async fn load_from_api(&self, name: &str, path: &Path) -> Result<AdapterRef, LoadError> {
        check_adapter_dir(path, &self.roots())?;
        let previous = self.lock().known.get(name).cloned();
        self.register(name, path.to_path_buf(), Source::Api);
        match self.get(name).await {
            Ok(a) => Ok(a),
            Err(e) => {
                self.remove(name);
                if let Some(p) = previous {
                    self.register(name, p.path, p.source);
                }
                Err(match e {
                    LookupError::Load(e) => e,
                    LookupError::Unknown(_) => {
                        LoadError::Invalid(format!("adapter {name} was removed while loading"))
                    }
                })
            }
        }
    }

    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// A handle on the loaded adapter, loading it from its known path if need be (LRU-evicting
    /// others).
    pub async fn get(&self, name: &str) -> Result<AdapterRef, LookupError> {
        if let Some(a) = self.touch(name)? {
            return Ok(a);
        }
        let lock = self.name_lock(name);
        let _load = lock.lock().await;
        let path = match self.touch(name)? {
            Some(a) => return Ok(a),
            None => self
                .lock()
                .known
                .get(name)
                .map(|k| k.path.clone())
                .ok_or_else(|| LookupError::Unknown(name.to_string()))?,
        };
        let result = match self.local_dir(&path).await {
            Ok(dir) => {
                let loader = self.loader.clone();
                let shown = dir.display().to_string();
                let task = tokio::task::spawn_blocking(move || loader(&dir));
                match tokio::time::timeout(self.load_timeout, task).await {
                    // A fetched adapter is named by its URI, not its place in the cache.
                    Ok(Ok(r)) => r.map_err(|e| {
                        LoadError::Invalid(e.replace(&shown, &path.display().to_string()))
                    }),
                    Ok(Err(e)) => Err(LoadError::Invalid(format!("adapter load task failed: {e}"))),
                    Err(_) => Err(LoadError::Timeout(self.load_timeout)),
                }
            }
            Err(e) => Err(e),
        };
        let mut g = self.lock();
        // The name may have been removed or re-pointed while loading.
        let current = g.known.get(name).map(|k| k.path.clone());
        if current.as_ref() != Some(&path) {
            return Err(LookupError::Unknown(name.to_string()));
        }
        match result {
            Ok(weights) => {
                g.tick += 1;
                g.next_id += 1;
                let (tick, id) = (g.tick, g.next_id);
                let handle = weights.shallow_clone();
                g.loaded.insert(
                    name.to_string(),
                    Loaded {
                        weights,
                        id,
                        last_use: tick,
                    },
                );
                if let Some(k) = g.known.get_mut(name) {
                    k.error = None;
                }
                evict(&mut g, Some(name));
                tracing::info!(adapter = name, path = %path.display(), "adapter loaded");
                Ok(AdapterRef {
                    id,
                    name: name.to_string(),
                    weights: handle,
                })
            }
            Err(e) => {
                if let Some(k) = g.known.get_mut(name) {
                    k.error = Some(e.to_string());
                }
                tracing::warn!(adapter = name, error = %e, "adapter load failed");
                Err(LookupError::Load(e))
            }
        }
    }

    /// The directory to load `path` from: itself, or for a URI the verified copy fetched.
    async fn local_dir(&self, path: &Path) -> Result<PathBuf, LoadError> {
        let Some(uri) = path.to_str().filter(|p| crate::remote::is_uri(p)) else {
            return Ok(path.to_path_buf());
        };
        let remote = self
            .remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(remote) = remote else {
            return Err(LoadError::Invalid(format!(
                "{uri}: this server does not fetch adapters by URI"
            )));
        };
        remote
            .localize(uri, None)
            .await
            .map_err(|e| LoadError::Invalid(e.to_string()))
    }

    fn touch(&self, name: &str) -> Result<Option<AdapterRef>, LookupError> {
        let mut g = self.lock();
        if !g.known.contains_key(name) {
            return Err(LookupError::Unknown(name.to_string()));
        }
        g.tick += 1;
        let tick = g.tick;
        Ok(g.loaded.get_mut(name).map(|e| {
            e.last_use = tick;
            AdapterRef {
                id: e.id,
                name: name.to_string(),
                weights: e.weights.shallow_clone(),
            }
        }))
    }
}

fn evict(g: &mut Inner, keep: Option<&str>) {
    while g.loaded.len() > g.max_loaded {
        let victim = g
            .loaded
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != keep)
            .min_by_key(|(_, e)| e.last_use)
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An adapter-shaped directory (the files exist; their content does not matter here).
    fn adapter_dir(root: &Path, name: &str) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(peft::CONFIG_FILE), "{}").expect("write");
        std::fs::write(d.join(peft::WEIGHTS_FILE), "").expect("write");
        d
    }

    fn mkfifo(path: &Path) {
        let ok = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo");
        assert!(ok.success());
    }

    #[test]
    fn api_paths_are_confined_to_the_roots_without_revealing_what_exists() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let roots = vec![root.path().canonicalize().expect("canonical")];
        let inside = adapter_dir(root.path(), "a");
        assert!(check_adapter_dir(&inside, &roots).is_ok());
        // Outside, existing or not, and escapes by `..` or symlink: one answer.
        let out = adapter_dir(outside.path(), "b");
        let escape = root
            .path()
            .join("..")
            .join(outside.path().file_name().expect("name"))
            .join("b");
        std::os::unix::fs::symlink(&out, root.path().join("link")).expect("symlink");
        for p in [
            out.clone(),
            outside.path().join("nothing"),
            root.path().join("nothing"),
            escape,
            root.path().join("link"),
        ] {
            let e = check_adapter_dir(&p, &roots).expect_err("refused");
            assert_eq!(
                e,
                LoadError::NotFound(p.display().to_string()),
                "{}",
                p.display()
            );
        }
        // A file inside that links outside is refused the same way.
        let sneaky = root.path().join("sneaky");
        std::fs::create_dir_all(&sneaky).expect("mkdir");
        std::fs::write(sneaky.join(peft::CONFIG_FILE), "{}").expect("write");
        std::os::unix::fs::symlink(
            out.join(peft::WEIGHTS_FILE),
            sneaky.join(peft::WEIGHTS_FILE),
        )
        .expect("symlink");
        assert!(matches!(
            check_adapter_dir(&sneaky, &roots),
            Err(LoadError::NotFound(_))
        ));
        // No roots: nothing loads through the API.
        assert!(matches!(
            check_adapter_dir(&inside, &[]),
            Err(LoadError::NotFound(_))
        ));
    }

    #[test]
    fn a_fifo_is_refused_without_being_opened() {
        let root = tempfile::tempdir().expect("tempdir");
        let roots = vec![root.path().canonicalize().expect("canonical")];
        let d = root.path().join("fifo");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(peft::CONFIG_FILE), "{}").expect("write");
        mkfifo(&d.join(peft::WEIGHTS_FILE));
        // Opening the FIFO for reading would block this test forever.
        let e = check_adapter_dir(&d, &roots).expect_err("refused");
        assert!(
            matches!(&e, LoadError::Invalid(m) if m.contains("not a regular file")),
            "{e:?}"
        );
    }

    /// A load that never finishes times out, and meanwhile other names load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_load_times_out_and_blocks_no_other_load() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        let loader: Loader = Arc::new(move |dir: &Path| {
            if dir.ends_with("slow") {
                // Stands in for a read that hangs (a stuck volume); released at the end.
                let _ = wait.lock().map(|w| w.recv_timeout(Duration::from_secs(30)));
            }
            Err(format!("{} is not an adapter", dir.display()))
        });
        let reg = Arc::new(Registry::with_loader(loader, 4, Duration::from_millis(500)));
        reg.register("slow", PathBuf::from("/x/slow"), Source::Cli);
        reg.register("fast", PathBuf::from("/x/fast"), Source::Cli);
        let r = reg.clone();
        let slow = tokio::spawn(async move { r.get("slow").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let fast = reg.get("fast").await.map(|a| a.id);
        assert_eq!(
            fast,
            Err(LookupError::Load(LoadError::Invalid(
                "/x/fast is not an adapter".into()
            )))
        );
        // `fast` did not wait for `slow`'s timeout.
        assert!(
            !slow.is_finished(),
            "the slow load ended before the fast one"
        );
        let slow = slow.await.expect("join").map(|a| a.id);
        assert!(start.elapsed() < Duration::from_secs(20));
        assert_eq!(
            slow,
            Err(LookupError::Load(LoadError::Timeout(
                Duration::from_millis(500)
            )))
        );
        let status = reg.status();
        assert!(
            status.iter().all(|s| s.error.is_some() && !s.loaded),
            "{status:?}"
        );
        let _ = release.send(());
    }

    #[test]
    fn default_roots_are_the_directories_of_configured_adapters() {
        let root = tempfile::tempdir().expect("tempdir");
        let a = adapter_dir(root.path(), "a");
        let reg = Registry::with_loader(
            Arc::new(|_: &Path| Err("unused".into())),
            2,
            Duration::from_secs(1),
        );
        assert!(reg.roots().is_empty());
        reg.register("a", a.clone(), Source::Config);
        assert_eq!(
            reg.roots(),
            vec![root.path().canonicalize().expect("canonical")]
        );
        // Explicit roots replace the derived ones.
        let other = tempfile::tempdir().expect("tempdir");
        reg.set_roots(&[other.path().to_path_buf(), PathBuf::from("/does/not/exist")]);
        assert_eq!(
            reg.roots(),
            vec![other.path().canonicalize().expect("canonical")]
        );
    }
}
