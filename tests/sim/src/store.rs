//! The object store: every object as JSON keyed by group/plural, namespace and name, one
//! cluster-wide resourceVersion counter, a bounded event log for watches, and a JSON snapshot on
//! disk so state survives a restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use crate::status::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub gr: String,
    pub namespace: String,
    pub etype: EventType,
    pub object: Arc<Value>,
    /// The object before a modification (selectors need it to turn a change that leaves or
    /// enters the selection into DELETED/ADDED, as the apiserver's watch cache does).
    pub old: Option<Arc<Value>>,
}

type Key = (String, String);

struct Inner {
    rv: u64,
    objects: HashMap<String, BTreeMap<Key, Arc<Value>>>,
    log: VecDeque<Arc<Event>>,
    /// Oldest resourceVersion a watch may still resume from.
    compacted: u64,
    dirty: bool,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Event>>,
    window: usize,
    state_file: Option<PathBuf>,
    /// Woken on every write so controllers react without polling.
    pub changed: Notify,
}

/// What a watch starts from: the backlog to replay and the live receiver.
pub struct WatchStart {
    pub backlog: Vec<Arc<Event>>,
    pub rx: broadcast::Receiver<Arc<Event>>,
}

impl Store {
    pub fn new(state_file: Option<PathBuf>, window: usize) -> anyhow::Result<Self> {
        let mut inner = Inner {
            rv: 1,
            objects: HashMap::new(),
            log: VecDeque::new(),
            compacted: 1,
            dirty: false,
        };
        if let Some(f) = &state_file
            && f.exists()
        {
            let data: Value = serde_json::from_slice(&std::fs::read(f)?)?;
            inner.rv = data["resourceVersion"].as_u64().unwrap_or(1);
            // The watch history is not persisted: a restart compacts it, so every watch resuming
            // from before the restart gets 410 Gone and re-lists (always safe for clients).
            inner.rv += 1;
            inner.compacted = inner.rv;
            if let Some(objs) = data["objects"].as_object() {
                for (gr, items) in objs {
                    let m = inner.objects.entry(gr.clone()).or_default();
                    for item in items.as_array().into_iter().flatten() {
                        let ns = item["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        let name = item["metadata"]["name"].as_str().unwrap_or("").to_string();
                        m.insert((ns, name), Arc::new(item.clone()));
                    }
                }
            }
        }
        let (tx, _) = broadcast::channel(window.max(1024) * 2);
        Ok(Self {
            inner: Mutex::new(inner),
            tx,
            window: window.max(1),
            state_file,
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, gr: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(gr)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    /// All objects of a type (in one namespace, or all when `ns` is None), sorted by key.
    pub fn list(&self, gr: &str, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let g = self.lock();
        let items = match g.objects.get(gr) {
            None => vec![],
            Some(m) => match ns {
                None => m.values().cloned().collect(),
                Some(ns) => m
                    .range((ns.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, v)| v.clone())
                    .collect(),
            },
        };
        (items, g.rv)
    }

    pub fn count(&self, gr: &str) -> usize {
        self.lock().objects.get(gr).map(|m| m.len()).unwrap_or(0)
    }

    /// Every stored type key (for garbage collection and namespace cleanup).
    pub fn types(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    fn record(
        &self,
        g: &mut Inner,
        gr: &str,
        ns: &str,
        etype: EventType,
        obj: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        let ev = Arc::new(Event {
            rv: g.rv,
            gr: gr.to_string(),
            namespace: ns.to_string(),
            etype,
            object: obj,
            old,
        });
        g.log.push_back(ev.clone());
        while g.log.len() > self.window {
            if let Some(old) = g.log.pop_front() {
                g.compacted = old.rv;
            }
        }
        g.dirty = true;
        let _ = self.tx.send(ev);
        self.changed.notify_waiters();
    }

    /// Create (when `expect` is None and the key is absent) or replace an object. `expect` is the
    /// resourceVersion the caller read; a mismatch is a 409 as in the apiserver.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &self,
        gr: &str,
        obj: Value,
        create: bool,
        expect: Option<&str>,
        conflict: impl FnOnce() -> ApiError,
        exists: impl FnOnce() -> ApiError,
        missing: impl FnOnce() -> ApiError,
    ) -> ApiResult<Arc<Value>> {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut g = self.lock();
        let key = (ns.clone(), name);
        let cur = g.objects.get(gr).and_then(|m| m.get(&key)).cloned();
        match (&cur, create) {
            (Some(_), true) => return Err(exists()),
            (None, false) => return Err(missing()),
            _ => {}
        }
        if let (Some(c), Some(e)) = (&cur, expect)
            && c["metadata"]["resourceVersion"].as_str() != Some(e)
        {
            return Err(conflict());
        }
        g.rv += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        let obj = Arc::new(obj);
        g.objects
            .entry(gr.to_string())
            .or_default()
            .insert(key, obj.clone());
        let et = if create {
            EventType::Added
        } else {
            EventType::Modified
        };
        self.record(&mut g, gr, &ns, et, obj.clone(), cur);
        Ok(obj)
    }

    /// Remove an object; `expect_uid` guards against deleting a re-created namesake.
    pub fn remove(
        &self,
        gr: &str,
        ns: &str,
        name: &str,
        expect_uid: Option<&str>,
    ) -> Option<Arc<Value>> {
        let mut g = self.lock();
        let key = (ns.to_string(), name.to_string());
        let cur = g.objects.get(gr).and_then(|m| m.get(&key)).cloned()?;
        if let Some(u) = expect_uid
            && cur["metadata"]["uid"].as_str() != Some(u)
        {
            return None;
        }
        g.objects.get_mut(gr).map(|m| m.remove(&key));
        g.rv += 1;
        let mut obj = (*cur).clone();
        obj["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        let obj = Arc::new(obj);
        self.record(&mut g, gr, ns, EventType::Deleted, obj.clone(), None);
        Some(obj)
    }

    /// Start a watch after `from` (exclusive). Err when `from` is older than the retained log.
    pub fn watch_from(&self, from: u64) -> Result<WatchStart, u64> {
        let g = self.lock();
        if from < g.compacted {
            return Err(g.compacted);
        }
        let backlog = g.log.iter().filter(|e| e.rv > from).cloned().collect();
        Ok(WatchStart {
            backlog,
            rx: self.tx.subscribe(),
        })
    }

    /// A consistent snapshot of one type plus a live receiver, for watches without a version.
    pub fn snapshot_and_watch(
        &self,
        gr: &str,
        ns: Option<&str>,
    ) -> (Vec<Arc<Value>>, u64, WatchStart) {
        let g = self.lock();
        let items: Vec<Arc<Value>> = match g.objects.get(gr) {
            None => vec![],
            Some(m) => m
                .iter()
                .filter(|((n, _), _)| ns.is_none_or(|x| x == n))
                .map(|(_, v)| v.clone())
                .collect(),
        };
        (
            items,
            g.rv,
            WatchStart {
                backlog: vec![],
                rx: self.tx.subscribe(),
            },
        )
    }

    /// Drop the watch log (tests use this to force `410 Gone` on resume).
    pub fn compact(&self) {
        let mut g = self.lock();
        g.log.clear();
        g.compacted = g.rv;
    }

    /// Write the snapshot if anything changed since the last write. Only the object handles are
    /// taken under the lock (requests wait on it); serialising and writing happen outside it, so
    /// call this from a blocking thread.
    pub fn persist(&self) -> anyhow::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let (rv, objects) = {
            let mut g = self.lock();
            if !g.dirty {
                return Ok(());
            }
            g.dirty = false;
            let objects: Vec<(String, Vec<Arc<Value>>)> = g
                .objects
                .iter()
                .map(|(gr, m)| (gr.clone(), m.values().cloned().collect()))
                .collect();
            (g.rv, objects)
        };
        #[derive(serde::Serialize)]
        struct Snapshot<'a> {
            #[serde(rename = "resourceVersion")]
            rv: u64,
            objects: BTreeMap<&'a str, Vec<&'a Value>>,
        }
        let snapshot = Snapshot {
            rv,
            objects: objects
                .iter()
                .map(|(gr, items)| (gr.as_str(), items.iter().map(|v| &**v).collect()))
                .collect(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&snapshot)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
