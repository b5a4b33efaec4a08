//! The kubelet: runs each container of a bound pod as a local process of the binary its image
//! maps to, in the pod's own mount namespace with its volumes, ServiceAccount token and
//! termination-message file at their real paths; a loopback IP per pod; probes; restart policy;
//! graceful termination; logs; status.
//!
//! Size (over 700 lines, on purpose): one pod's lifecycle (init containers, start, probes, restarts,
//! termination, status) is one state machine over one pod record; the probes live in `probes`.

mod env;
pub mod hosts;
pub mod probes;
pub mod process;
pub mod volumes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster::{Cluster, WriteOpts, now};

pub fn log_path(state: &Path, uid: &str, container: &str, previous: bool) -> PathBuf {
    let f = if previous {
        format!("{container}.previous.log")
    } else {
        format!("{container}.log")
    };
    volumes::pod_dir(state, uid).join("logs").join(f)
}

#[derive(Clone, Debug)]
struct CState {
    name: String,
    image: String,
    state: Value,
    last_state: Value,
    restart_count: i64,
    ready: bool,
    started: bool,
    /// True once the container will not run again (terminated under its restart policy).
    done: bool,
}

struct PodRt {
    uid: String,
    ip: String,
    start_time: String,
    containers: Mutex<Vec<CState>>,
    init: Mutex<Vec<CState>>,
    initialized: AtomicBool,
    failed_init: AtomicBool,
    finished: AtomicBool,
    stop: watch::Sender<Option<i64>>,
    stopping: AtomicBool,
}

pub struct Kubelet {
    cluster: Arc<Cluster>,
    pods: Mutex<HashMap<String, Arc<PodRt>>>,
    namespaces: bool,
    uts: bool,
}

fn waiting(reason: &str, message: &str) -> Value {
    if message.is_empty() {
        json!({"waiting": {"reason": reason}})
    } else {
        json!({"waiting": {"reason": reason, "message": message}})
    }
}

/// What the kubelet reports for a container it ran but can no longer find (its runtime lost
/// it, as in a node reboot).
fn lost_container() -> Value {
    json!({"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated"}})
}

/// Container states for a pod that ran under an earlier tailor-sim on this state dir, from the
/// status it last reported, as the kubelet rebuilds them after a node reboot: a container that
/// was running is lost (`ContainerStatusUnknown`, exit code 137, restartCount + 1) and the
/// restart policy decides what follows. `Always` and `OnFailure` pods get a new sandbox, so
/// their init containers and their restartable containers run again; a `Never` pod that had
/// started is not run again (the kubelet does not recreate its sandbox) and ends with the states
/// it has. None for a pod that never ran; otherwise whether no container of it will run again.
fn recover(pod: &Value, containers: &mut [CState], init: &mut [CState]) -> Option<bool> {
    let statuses =
        |list: &str| -> Vec<Value> { pod["status"][list].as_array().cloned().unwrap_or_default() };
    let (old_main, old_init) = (
        statuses("containerStatuses"),
        statuses("initContainerStatuses"),
    );
    let ran = |s: &Value| s["state"]["running"].is_object() || s["state"]["terminated"].is_object();
    if !old_main.iter().chain(&old_init).any(ran) {
        return None;
    }
    let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    let find = |old: &[Value], name: &str| old.iter().find(|s| s["name"] == name).cloned();
    let carry = |c: &mut CState, o: &Value| {
        c.restart_count = o["restartCount"].as_i64().unwrap_or(0);
        if o["lastState"].is_object() {
            c.last_state = o["lastState"].clone();
        }
    };
    if policy == "Never" {
        for (cs, old) in [(&mut *containers, &old_main), (&mut *init, &old_init)] {
            for c in cs.iter_mut() {
                if let Some(o) = find(old, &c.name) {
                    carry(c, &o);
                    c.state = o["state"].clone();
                    if o["state"]["running"].is_object() {
                        c.state = lost_container();
                        c.restart_count += 1;
                    }
                }
                c.done = true;
            }
        }
        return Some(true);
    }
    for c in init.iter_mut() {
        if let Some(o) = find(&old_init, &c.name) {
            carry(c, &o);
            if o["state"]["running"].is_object() {
                c.last_state = lost_container();
                c.restart_count += 1;
            }
        }
    }
    for c in containers.iter_mut() {
        let Some(o) = find(&old_main, &c.name) else {
            continue;
        };
        carry(c, &o);
        let t = &o["state"]["terminated"];
        if o["state"]["running"].is_object() {
            c.last_state = lost_container();
            c.restart_count += 1;
        } else if t.is_object() {
            if policy == "OnFailure" && t["exitCode"].as_i64() == Some(0) {
                c.state = o["state"].clone();
                c.done = true;
            } else {
                // Exited and due to restart (the restart had not been reported yet).
                c.last_state = o["state"].clone();
                c.restart_count += 1;
            }
        }
    }
    Some(containers.iter().all(|c| c.done))
}

fn node_index(node: &str) -> u32 {
    node.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

impl Kubelet {
    pub fn new(cluster: Arc<Cluster>) -> Arc<Self> {
        let root = nix::unistd::geteuid().is_root();
        // Probe the real thing: a private mount namespace with a bind mount in it.
        let has_unshare = std::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                "mount --bind / /mnt 2>/dev/null || mount --bind /tmp /tmp",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if !(root && has_unshare) {
            tracing::warn!(
                "not root or no unshare(1): pods run without their own mount namespace; volumes are not at their mountPath"
            );
        }
        // A UTS namespace gives each pod its hostname (`hostname`, gethostname(2)).
        let has_uts = root
            && std::process::Command::new("unshare")
                .args(["--uts", "--", "true"])
                .output()
                .is_ok_and(|o| o.status.success());
        Arc::new(Self {
            cluster,
            pods: Mutex::new(HashMap::new()),
            namespaces: root && has_unshare,
            uts: has_uts,
        })
    }

    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        crate::controllers::spawn_loop(
            self.cluster.clone(),
            "kubelet",
            Duration::from_millis(300),
            move |_| me.sync(),
        );
    }

    /// The binary an image runs as, from the `--image` mappings (exact, then without tag or
    /// digest, then by last path component).
    fn resolve_image(&self, image: &str) -> Option<PathBuf> {
        let imgs = &self.cluster.cfg.images;
        if let Some(p) = imgs.get(image) {
            return Some(p.clone());
        }
        let no_digest = image.split('@').next().unwrap_or(image);
        let no_tag = match no_digest.rsplit_once(':') {
            Some((a, b)) if !b.contains('/') => a,
            _ => no_digest,
        };
        if let Some(p) = imgs.get(no_tag) {
            return Some(p.clone());
        }
        let last = no_tag.rsplit('/').next().unwrap_or(no_tag);
        imgs.get(last).cloned()
    }

    fn allocate_ip(&self, pod: &Value, taken: &[String]) -> String {
        if let Some(ip) = pod["status"]["podIP"].as_str()
            && !taken.iter().any(|t| t == ip)
        {
            return ip.to_string();
        }
        let n = node_index(pod["spec"]["nodeName"].as_str().unwrap_or(""));
        for host in 2..255 {
            let ip = format!("127.{}.{}.{host}", self.cluster.cfg.net, n.min(199));
            if !taken.contains(&ip) {
                return ip;
            }
        }
        format!("127.{}.{}.254", self.cluster.cfg.net, n.min(199))
    }

    fn sync(self: &Arc<Self>) {
        let Ok(pod_rt) = self.cluster.rt("", "pods") else {
            return;
        };
        let (pods, _) = self.cluster.store.list(&pod_rt.gr(), None);
        let mut map = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        // Pods that vanished from the API (force-deleted) are killed at once.
        let live: Vec<String> = pods
            .iter()
            .filter_map(|p| p["metadata"]["uid"].as_str().map(String::from))
            .collect();
        map.retain(|uid, rt| {
            let keep = live.contains(uid);
            if !keep {
                rt.stop.send_replace(Some(0));
            }
            keep
        });
        let taken: Vec<String> = map.values().map(|r| r.ip.clone()).collect();
        let mut taken = taken;
        for pod in &pods {
            if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
                continue;
            }
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let ns = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            let terminal = matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded") | Some("Failed")
            );
            let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
            let rt = map.get(&uid).cloned();
            match (rt, deleting) {
                (None, true) => {
                    self.cluster.force_remove(&pod_rt, &ns, &name, Some(&uid));
                }
                (None, false) if !terminal => {
                    let ip = self.allocate_ip(pod, &taken);
                    taken.push(ip.clone());
                    let (tx, _) = watch::channel(None);
                    let mk = |c: &Value| CState {
                        name: c["name"].as_str().unwrap_or("").into(),
                        image: c["image"].as_str().unwrap_or("").into(),
                        state: waiting("ContainerCreating", ""),
                        last_state: json!({}),
                        restart_count: 0,
                        ready: false,
                        started: false,
                        done: false,
                    };
                    let mut containers: Vec<CState> = pod["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(mk)
                        .collect();
                    let mut init: Vec<CState> = pod["spec"]["initContainers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let mut s = mk(c);
                            s.state = waiting("PodInitializing", "");
                            s
                        })
                        .collect();
                    let no_init = init.is_empty();
                    // A pod with container statuses but no runtime here ran under an earlier
                    // tailor-sim on this state dir: pick it up as a kubelet does after a reboot.
                    let recovered = recover(pod, &mut containers, &mut init);
                    let over = recovered == Some(true);
                    if recovered == Some(false) {
                        crate::events::record(
                            &self.cluster,
                            pod,
                            "Normal",
                            "SandboxChanged",
                            "Pod sandbox changed, it will be killed and re-created.",
                            "kubelet",
                        );
                    }
                    let initialized = no_init
                        || over
                            && pod["status"]["conditions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["type"] == "Initialized" && c["status"] == "True");
                    let rt = Arc::new(PodRt {
                        uid: uid.clone(),
                        ip,
                        start_time: pod["status"]["startTime"]
                            .as_str()
                            .map(String::from)
                            .unwrap_or_else(now),
                        containers: Mutex::new(containers),
                        init: Mutex::new(init),
                        initialized: AtomicBool::new(initialized),
                        failed_init: AtomicBool::new(false),
                        finished: AtomicBool::new(over),
                        stop: tx,
                        stopping: AtomicBool::new(false),
                    });
                    map.insert(uid.clone(), rt.clone());
                    if over {
                        // Nothing to run again: the next pass reports the final phase.
                        continue;
                    }
                    let me = self.clone();
                    let mut p = (**pod).clone();
                    p["status"]["podIP"] = json!(rt.ip);
                    tokio::spawn(async move {
                        me.run_pod(rt.clone(), p).await;
                        rt.finished.store(true, Ordering::SeqCst);
                    });
                }
                (None, false) => {}
                (Some(rt), true) => {
                    if !rt.stopping.swap(true, Ordering::SeqCst) {
                        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                            .as_i64()
                            .unwrap_or(30);
                        rt.stop.send_replace(Some(grace));
                    }
                    if rt.finished.load(Ordering::SeqCst) {
                        self.write_status(pod, &rt);
                        self.cluster.force_remove(&pod_rt, &ns, &name, Some(&uid));
                        map.remove(&uid);
                    } else {
                        self.write_status(pod, &rt);
                    }
                }
                (Some(rt), false) => self.write_status(pod, &rt),
            }
        }
    }

    fn write_status(&self, pod: &Value, rt: &PodRt) {
        let Ok(pod_rt) = self.cluster.rt("", "pods") else {
            return;
        };
        let cs = rt
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let init = rt.init.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let render = |c: &CState| {
            json!({"name": c.name, "image": c.image, "imageID": format!("tailor-sim://{}", c.image), "containerID": format!("tailor-sim://{}-{}", rt.uid, c.name),
                "ready": c.ready, "started": c.started, "restartCount": c.restart_count, "state": c.state, "lastState": c.last_state})
        };
        let initialized = rt.initialized.load(Ordering::SeqCst);
        let any_running = cs.iter().any(|c| c.state.get("running").is_some());
        let all_done = !cs.is_empty() && cs.iter().all(|c| c.done);
        let phase = if rt.failed_init.load(Ordering::SeqCst) {
            "Failed"
        } else if all_done {
            let ok = cs
                .iter()
                .all(|c| c.state["terminated"]["exitCode"].as_i64() == Some(0));
            if ok { "Succeeded" } else { "Failed" }
        } else if any_running || cs.iter().any(|c| c.started || c.restart_count > 0) {
            "Running"
        } else {
            "Pending"
        };
        let all_ready = !cs.is_empty() && cs.iter().all(|c| c.ready) && phase == "Running";
        let mut status = pod["status"].clone();
        let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        let mut set = |t: &str, ok: bool, reason: &str| {
            let st = if ok { "True" } else { "False" };
            match conds.iter_mut().find(|c| c["type"] == t) {
                Some(c) => {
                    if c["status"] != st {
                        c["lastTransitionTime"] = json!(now());
                    }
                    c["status"] = json!(st);
                    match (ok, reason.is_empty()) {
                        (false, false) => c["reason"] = json!(reason),
                        _ => {
                            if let Some(m) = c.as_object_mut() {
                                m.remove("reason");
                            }
                        }
                    }
                }
                None => {
                    let mut c = json!({"type": t, "status": st, "lastTransitionTime": now(), "lastProbeTime": null});
                    if !ok && !reason.is_empty() {
                        c["reason"] = json!(reason);
                    }
                    conds.push(c);
                }
            }
        };
        let terminal = matches!(phase, "Succeeded" | "Failed");
        set("PodReadyToStartContainers", !terminal, "");
        set("Initialized", initialized, "ContainersNotInitialized");
        set(
            "Ready",
            all_ready,
            if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            },
        );
        set(
            "ContainersReady",
            all_ready,
            if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            },
        );
        // Conditions in the kubelet's order.
        let order = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ];
        conds.sort_by_key(|c| order.iter().position(|o| c["type"] == *o).unwrap_or(9));
        status["conditions"] = Value::Array(conds);
        status["phase"] = json!(phase);
        status["hostIP"] = json!("127.0.0.1");
        status["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
        status["podIP"] = json!(rt.ip);
        status["podIPs"] = json!([{"ip": rt.ip}]);
        status["startTime"] = json!(rt.start_time);
        status["containerStatuses"] = Value::Array(cs.iter().map(render).collect());
        if !init.is_empty() {
            status["initContainerStatuses"] = Value::Array(init.iter().map(render).collect());
        }
        if status != pod["status"] {
            let mut n = pod.clone();
            n["status"] = status;
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
            let name = pod["metadata"]["name"].as_str().unwrap_or("");
            let _ = self
                .cluster
                .update(&pod_rt, ns, name, n, &WriteOpts::status("kubelet"));
        }
    }

    /// Rewrite a pod's hosts file from the Services and endpoints as they are now.
    fn sync_hosts(&self, pod: &Value, ip: &str, path: &Path) {
        let (services, _) = self.cluster.store.list("/services", None);
        let (endpoints, _) = self.cluster.store.list("/endpoints", None);
        if let Err(e) = hosts::write(path, &hosts::render(pod, ip, &services, &endpoints)) {
            tracing::warn!(path = %path.display(), error = %e, "writing a pod's hosts file");
        }
    }

    fn set_state(rt: &PodRt, init: bool, idx: usize, f: impl FnOnce(&mut CState)) {
        let m = if init { &rt.init } else { &rt.containers };
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.get_mut(idx) {
            f(c);
        }
    }

    async fn run_pod(self: Arc<Self>, rt: Arc<PodRt>, pod: Value) {
        let mut stop = rt.stop.subscribe();
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let dir = volumes::pod_dir(&self.cluster.cfg.state_dir, &rt.uid);
        let _ = std::fs::create_dir_all(dir.join("logs"));
        let _ = std::fs::create_dir_all(dir.join("termination"));
        let _ = std::fs::create_dir_all(dir.join("home"));
        // ServiceAccount token bound to this pod.
        let sa_name = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let mut vols;
        loop {
            let token = match self.cluster.store.get("/serviceaccounts", &ns, &sa_name) {
                Some(sa) => {
                    let (t, _) = crate::auth::issue_token(
                        &self.cluster,
                        &ns,
                        &sa_name,
                        sa["metadata"]["uid"].as_str().unwrap_or(""),
                        3607 * 24,
                        Some((pod["metadata"]["name"].as_str().unwrap_or(""), &rt.uid)),
                        &[],
                    );
                    Some(t)
                }
                None => None,
            };
            let result = match &token {
                None => Err(format!("serviceaccount \"{sa_name}\" not found")),
                Some(t) => volumes::sync(&self.cluster, &pod, t).map(|v| (v, t.clone())),
            };
            match result {
                Ok((v, t)) => {
                    let sa_dir = dir.join("serviceaccount");
                    let _ = std::fs::create_dir_all(&sa_dir);
                    let _ = std::fs::write(sa_dir.join("token"), &t);
                    let _ = std::fs::write(sa_dir.join("ca.crt"), &self.cluster.ca_pem);
                    let _ = std::fs::write(sa_dir.join("namespace"), &ns);
                    vols = v;
                    break;
                }
                Err(msg) => {
                    // The count first: a guard in the `for` head would live through the loop,
                    // and set_state takes the same lock (a deadlock that hung the shutdown).
                    let n = rt
                        .containers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .len();
                    for i in 0..n {
                        Self::set_state(&rt, false, i, |c| {
                            c.state = waiting(
                                "ContainerCreating",
                                &format!("MountVolume.SetUp failed: {msg}"),
                            )
                        });
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        // /etc/hosts, and keeping it and the ConfigMap/Secret volumes current while the pod runs.
        let hosts_file = dir.join("hosts");
        self.sync_hosts(&pod, &rt.ip, &hosts_file);
        {
            let me = self.clone();
            let pod = pod.clone();
            let mut stop = rt.stop.subscribe();
            let (ip, hosts_file) = (rt.ip.clone(), hosts_file.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return,
                    }
                    let _ = volumes::sync(&me.cluster, &pod, "");
                    me.sync_hosts(&pod, &ip, &hosts_file);
                }
            });
        }
        let automount = pod["spec"]["automountServiceAccountToken"].as_bool() != Some(false);
        if automount {
            vols.push(volumes::Volume {
                name: volumes::SA_VOLUME.into(),
                path: dir.join("serviceaccount"),
                read_only: true,
            });
        }
        let init_specs: Vec<Value> = pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, c) in init_specs.iter().enumerate() {
            loop {
                let code = self
                    .clone()
                    .run_container(&rt, &pod, c, i, true, &vols, automount)
                    .await;
                match code {
                    None => return,
                    Some(0) => break,
                    Some(_) if pod["spec"]["restartPolicy"].as_str() == Some("Never") => {
                        rt.failed_init.store(true, Ordering::SeqCst);
                        // The count first: a lock held by the loop's range would deadlock
                        // set_state (and with it this node's status writes).
                        let n = rt
                            .containers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .len();
                        for j in 0..n {
                            Self::set_state(&rt, false, j, |s| s.done = true);
                        }
                        return;
                    }
                    Some(_) => {
                        Self::set_state(&rt, true, i, |s| s.restart_count += 1);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
        }
        rt.initialized.store(true, Ordering::SeqCst);
        let specs: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut handles = vec![];
        for (i, c) in specs.into_iter().enumerate() {
            let me = self.clone();
            let rt = rt.clone();
            let pod = pod.clone();
            let vols = vols.clone();
            handles.push(tokio::spawn(async move {
                me.supervise(&rt, &pod, &c, i, &vols, automount).await
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Run one container under the pod's restart policy until it is done or the pod stops.
    async fn supervise(
        self: Arc<Self>,
        rt: &Arc<PodRt>,
        pod: &Value,
        c: &Value,
        idx: usize,
        vols: &[volumes::Volume],
        automount: bool,
    ) {
        let policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let mut stop = rt.stop.subscribe();
        if Self::get_state(rt, false, idx).is_some_and(|s| s.done) {
            // Finished before a restart of tailor-sim and not to be run again.
            return;
        }
        let mut backoff = 1u64;
        loop {
            let Some(code) = self
                .clone()
                .run_container(rt, pod, c, idx, false, vols, automount)
                .await
            else {
                Self::set_state(rt, false, idx, |s| s.done = true);
                return;
            };
            let restart = match policy.as_str() {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
            if !restart {
                Self::set_state(rt, false, idx, |s| s.done = true);
                return;
            }
            let name = c["name"].as_str().unwrap_or("");
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
            Self::set_state(rt, false, idx, |s| {
                s.last_state = s.state.clone();
                s.state = waiting(
                    "CrashLoopBackOff",
                    &format!(
                        "back-off {backoff}s restarting failed container={name} pod={pod_name}_{}({})",
                        pod["metadata"]["namespace"].as_str().unwrap_or(""),
                        rt.uid
                    ),
                );
                s.restart_count += 1;
            });
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(backoff)) => {}
                _ = stop.changed() => {
                    Self::set_state(rt, false, idx, |s| s.done = true);
                    return;
                }
            }
            backoff = (backoff * 2).min(10);
        }
    }

    /// Start the container process once and wait for it; None when the pod is being stopped.
    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        self: Arc<Self>,
        rt: &Arc<PodRt>,
        pod: &Value,
        c: &Value,
        idx: usize,
        init: bool,
        vols: &[volumes::Volume],
        automount: bool,
    ) -> Option<i32> {
        let mut stop = rt.stop.subscribe();
        if stop.borrow().is_some() {
            return None;
        }
        let image = c["image"].as_str().unwrap_or("").to_string();
        let cname = c["name"].as_str().unwrap_or("").to_string();
        let Some(bin) = self.resolve_image(&image) else {
            Self::set_state(rt, init, idx, |s| {
                s.state = waiting(
                    "ErrImagePull",
                    &format!(
                        "failed to pull and unpack image \"{image}\": tailor-sim has no --image mapping for \"{image}\""
                    ),
                )
            });
            crate::events::record(
                &self.cluster,
                pod,
                "Warning",
                "Failed",
                &format!(
                    "Failed to pull image \"{image}\": no --image mapping for it in tailor-sim"
                ),
                "kubelet",
            );
            let _ = stop.changed().await;
            return None;
        };
        let env = loop {
            match env::build(&self.cluster, pod, c, &rt.ip) {
                Ok(e) => break e,
                Err(msg) => {
                    Self::set_state(rt, init, idx, |s| {
                        s.state = waiting("CreateContainerConfigError", &msg)
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return None,
                    }
                }
            }
        };
        let dir = volumes::pod_dir(&self.cluster.cfg.state_dir, &rt.uid);
        // Command: the image's binary unless the command names another program on this host.
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(|s| env::expand(s, &env)))
                .collect()
        };
        let command = strs(&c["command"]);
        let args = strs(&c["args"]);
        let mut argv: Vec<String> = if command.is_empty() {
            let mut a = vec![bin.to_string_lossy().into_owned()];
            a.extend(args);
            a
        } else {
            let first = &command[0];
            let same_name = Path::new(first).file_name() == bin.file_name();
            let on_host = Path::new(first).is_absolute() && Path::new(first).exists()
                || (!first.contains('/') && process::which(first));
            let head = if same_name || !on_host {
                bin.to_string_lossy().into_owned()
            } else {
                first.clone()
            };
            let mut a = vec![head];
            a.extend(command[1..].iter().cloned());
            a.extend(args);
            a
        };
        // Mounts: volumes, the ServiceAccount token, the termination-message file.
        let term_file = dir.join("termination").join(&cname);
        let _ = std::fs::write(&term_file, b"");
        let mut reported = false;
        let mounts = loop {
            let hosts_file = dir.join("hosts");
            let hosts = hosts::managed(pod, c).then_some(hosts_file.as_path());
            match volumes::container_mounts(c, vols, &env, automount, &term_file, hosts) {
                Ok(m) => break m,
                Err(msg) => {
                    // As the kubelet: the container waits with the reason, an Event says why,
                    // and creating it is retried.
                    Self::set_state(rt, init, idx, |s| {
                        s.state = waiting("CreateContainerConfigError", &msg)
                    });
                    if !std::mem::replace(&mut reported, true) {
                        crate::events::record(
                            &self.cluster,
                            pod,
                            "Warning",
                            "Failed",
                            &format!("Error: {msg}"),
                            "kubelet",
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return None,
                    }
                }
            }
        };
        let log = log_path(&self.cluster.cfg.state_dir, &rt.uid, &cname, false);
        let restarted = Self::get_state(rt, init, idx)
            .is_some_and(|s| s.restart_count > 0 || s.last_state.get("terminated").is_some());
        if restarted && log.exists() {
            let _ = std::fs::rename(
                &log,
                log_path(&self.cluster.cfg.state_dir, &rt.uid, &cname, true),
            );
        }
        let Ok(out) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        else {
            return None;
        };
        let Ok(err) = out.try_clone() else {
            return None;
        };
        let workdir = c["workingDir"].as_str().map(String::from);
        let mut cmd = if self.namespaces {
            let host = self.uts.then(|| hosts::hostname(pod));
            let script =
                volumes::mount_script(&mounts, workdir.as_deref(), host, Path::new(&argv[0]));
            let mut cmd = tokio::process::Command::new("unshare");
            if self.uts {
                cmd.arg("--uts");
            }
            cmd.args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
            ]);
            cmd.args(&argv);
            cmd
        } else {
            // No mount namespace: paths are passed through env instead (see the crate docs).
            let mut cmd = tokio::process::Command::new(argv.remove(0));
            cmd.args(&argv);
            if let Some(w) = &workdir {
                let _ = std::fs::create_dir_all(w);
                cmd.current_dir(w);
            }
            cmd
        };
        cmd.env_clear();
        for (k, v) in std::env::vars() {
            if k != "KUBECONFIG" && k != "HOME" && !k.starts_with("KUBERNETES_") {
                cmd.env(k, v);
            }
        }
        cmd.env("HOME", dir.join("home"));
        if !self.namespaces {
            // Without a mount namespace the token cannot be at its in-cluster path: hand the
            // pod a kubeconfig with the same credentials instead.
            let kc = dir.join("kubeconfig");
            let token = std::fs::read_to_string(dir.join("serviceaccount").join("token"))
                .unwrap_or_default();
            let server = format!(
                "https://{}:{}",
                self.cluster.cfg.host, self.cluster.cfg.port
            );
            if crate::kubeconfig::write_ns(
                &kc,
                &server,
                &self.cluster.ca_pem,
                &token,
                pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            )
            .is_ok()
            {
                cmd.env("KUBECONFIG", &kc);
            }
        }
        cmd.envs(&env);
        cmd.stdout(out)
            .stderr(err)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                Self::set_state(rt, init, idx, |s| {
                    s.state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": format!("failed to start {}: {e}", bin.display()), "startedAt": now(), "finishedAt": now()}});
                });
                return Some(128);
            }
        };
        let pid = child.id().unwrap_or(0) as i32;
        let mnt_ns = if self.namespaces {
            process::container_mount_ns(pid).await
        } else {
            None
        };
        let tracked = process::Tracked {
            pid,
            start: process::start_time(pid).unwrap_or(0),
            mnt_ns,
        };
        // Recorded so that the next start can kill it should tailor-sim die without stopping it.
        let pid_file = dir.join("pids").join(&cname);
        if tracked.start != 0 {
            let _ = std::fs::create_dir_all(dir.join("pids"));
            let _ = std::fs::write(&pid_file, tracked.record());
        }
        let started_at = now();
        let has_readiness = c["readinessProbe"].is_object();
        // With a startup probe the container counts as started, and is probed for readiness
        // and liveness, only once that probe has succeeded (as the kubelet does).
        let startup = c["startupProbe"].clone();
        let has_startup = startup.is_object() && !init;
        Self::set_state(rt, init, idx, |s| {
            s.state = json!({"running": {"startedAt": started_at}});
            s.started = !has_startup;
            s.ready = !has_readiness && !has_startup && !init;
        });
        crate::events::record(
            &self.cluster,
            pod,
            "Normal",
            "Started",
            &format!("Started container {cname}"),
            "kubelet",
        );
        // Probes while it runs.
        let (probe_stop_tx, probe_stop) = watch::channel(false);
        let (liveness_fail_tx, mut liveness_fail) = tokio::sync::mpsc::channel::<&'static str>(1);
        let (started_tx, started_rx) = watch::channel(!has_startup);
        if has_startup {
            let rt2 = rt.clone();
            let c2 = c.clone();
            let mut ps = probe_stop.clone();
            let lf = liveness_fail_tx.clone();
            let has_readiness2 = has_readiness;
            tokio::spawn(async move {
                let delay = startup["initialDelaySeconds"].as_u64().unwrap_or(0);
                let period = Duration::from_millis(
                    (startup["periodSeconds"].as_f64().unwrap_or(10.0) * 1000.0) as u64,
                )
                .max(Duration::from_millis(100));
                let fail_thr = startup["failureThreshold"].as_u64().unwrap_or(3);
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(delay)) => {}, _ = ps.changed() => return }
                let mut fails = 0u64;
                loop {
                    if probes::run(&startup, &c2, &rt2.ip).await {
                        Self::set_state(&rt2, false, idx, |s| {
                            s.started = true;
                            s.ready = !has_readiness2;
                        });
                        let _ = started_tx.send(true);
                        return;
                    }
                    fails += 1;
                    if fails >= fail_thr {
                        let _ = lf.send("startup").await;
                        return;
                    }
                    // Probed quickly at first, as readiness below, so a fast start is seen soon.
                    let wait = if fails < 20 {
                        period.min(Duration::from_millis(250))
                    } else {
                        period
                    };
                    tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = ps.changed() => return }
                }
            });
        }
        if !init {
            for (kind, probe) in [
                ("readiness", c["readinessProbe"].clone()),
                ("liveness", c["livenessProbe"].clone()),
            ] {
                if !probe.is_object() {
                    continue;
                }
                let rt2 = rt.clone();
                let c2 = c.clone();
                let mut ps = probe_stop.clone();
                let lf = liveness_fail_tx.clone();
                let mut started = started_rx.clone();
                tokio::spawn(async move {
                    tokio::select! { r = started.wait_for(|s| *s) => if r.is_err() { return }, _ = ps.changed() => return }
                    let delay = probe["initialDelaySeconds"].as_u64().unwrap_or(0);
                    let period = Duration::from_millis(
                        (probe["periodSeconds"].as_f64().unwrap_or(10.0) * 1000.0) as u64,
                    )
                    .max(Duration::from_millis(100));
                    let fail_thr = probe["failureThreshold"].as_u64().unwrap_or(3);
                    let ok_thr = probe["successThreshold"].as_u64().unwrap_or(1);
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(delay)) => {}, _ = ps.changed() => return }
                    let (mut fails, mut oks) = (0u64, 0u64);
                    // Readiness is probed quickly until the first success, so pods become
                    // Ready soon after they listen (the first real probe is immediate too).
                    let mut first = true;
                    loop {
                        let ok = probes::run(&probe, &c2, &rt2.ip).await;
                        if ok {
                            oks += 1;
                            fails = 0;
                        } else {
                            fails += 1;
                            oks = 0;
                        }
                        if kind == "readiness" {
                            if ok && oks >= ok_thr {
                                Self::set_state(&rt2, false, idx, |s| s.ready = true);
                                first = false;
                            }
                            if !ok && fails >= fail_thr {
                                Self::set_state(&rt2, false, idx, |s| s.ready = false);
                            }
                        } else if !ok && fails >= fail_thr {
                            let _ = lf.send("liveness").await;
                            return;
                        }
                        let wait = if kind == "readiness" && first {
                            period.min(Duration::from_millis(250))
                        } else {
                            period
                        };
                        tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = ps.changed() => return }
                    }
                });
            }
        }
        drop(liveness_fail_tx);
        let grace_default = pod["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let mut stopped = false;
        let mut liveness_killed = false;
        let status = tokio::select! {
            s = child.wait() => {
                // The container ends with its main process: what it left behind goes too.
                process::kill_all(&tracked);
                s.ok()
            }
            g = stop.changed() => {
                let grace = if g.is_ok() { (*stop.borrow()).unwrap_or(grace_default) } else { 0 };
                stopped = true;
                process::terminate(&mut child, &tracked, grace).await
            }
            Some(probe) = liveness_fail.recv() => {
                liveness_killed = true;
                crate::events::record(&self.cluster, pod, "Normal", "Killing", &format!("Container {cname} failed {probe} probe, will be restarted"), "kubelet");
                process::terminate(&mut child, &tracked, grace_default).await
            }
        };
        let _ = probe_stop_tx.send(true);
        let _ = std::fs::remove_file(&pid_file);
        let code = status
            .and_then(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().or_else(|| s.signal().map(|sig| 128 + sig))
            })
            .unwrap_or(137);
        let mut message = std::fs::read(&term_file)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .unwrap_or_default();
        if message.is_empty()
            && code != 0
            && c["terminationMessagePolicy"].as_str() == Some("FallbackToLogsOnError")
        {
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = logs.lines().collect();
            message = lines[lines.len().saturating_sub(80)..].join("\n");
            if message.len() > 2048 {
                let mut start = message.len() - 2048;
                while !message.is_char_boundary(start) {
                    start += 1;
                }
                message = message[start..].to_string();
            }
        }
        let reason = if code == 0 { "Completed" } else { "Error" };
        let finished = now();
        Self::set_state(rt, init, idx, |s| {
            let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished, "containerID": format!("tailor-sim://{}-{cname}", rt.uid)});
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            s.state = json!({"terminated": t});
            s.ready = false;
        });
        if stopped {
            return None;
        }
        let _ = liveness_killed;
        Some(code)
    }

    fn get_state(rt: &PodRt, init: bool, idx: usize) -> Option<CState> {
        let m = if init { &rt.init } else { &rt.containers };
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(idx)
            .cloned()
    }
}

impl Kubelet {
    /// Report every running pod's current state once more (at shutdown, after the controllers
    /// have stopped and before the processes are killed, so the saved state is up to date).
    pub fn flush_status(&self) {
        let Ok(pod_rt) = self.cluster.rt("", "pods") else {
            return;
        };
        let runtimes = self.runtimes();
        let (pods, _) = self.cluster.store.list(&pod_rt.gr(), None);
        for pod in &pods {
            if let Some(rt) = runtimes
                .iter()
                .find(|r| pod["metadata"]["uid"].as_str() == Some(r.uid.as_str()))
            {
                self.write_status(pod, rt);
            }
        }
    }

    /// The pods this kubelet runs. At shutdown only: a kubelet pass stuck with the map locked
    /// must not stop the shutdown, so the lock is tried for two seconds, then given up (the
    /// containers are still killed from their records).
    fn runtimes(&self) -> Vec<Arc<PodRt>> {
        for _ in 0..200 {
            if let Ok(map) = self.pods.try_lock() {
                return map.values().cloned().collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!("the kubelet's pod map stayed locked; stopping pods from their records");
        vec![]
    }

    /// Stop every pod's processes as a node's graceful shutdown does: SIGTERM, and SIGKILL after
    /// each pod's termination grace period capped at `grace` (a pod already terminating is cut
    /// short too). Returns once no container process of this simulator is left.
    pub async fn shutdown(&self, grace: Duration) {
        let pods = self.runtimes();
        // send_replace: a pod whose task has not subscribed yet still sees it when it does.
        for p in &pods {
            p.stop.send_replace(Some(grace.as_secs() as i64));
        }
        let deadline = tokio::time::Instant::now() + grace + Duration::from_millis(500);
        while tokio::time::Instant::now() < deadline
            && pods.iter().any(|p| !p.finished.load(Ordering::SeqCst))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Whatever is left (a container still in a longer grace period, one just starting):
        // killed, as the node powers off.
        let state = self.cluster.cfg.state_dir.clone();
        let _ =
            tokio::task::spawn_blocking(move || process::kill_recorded_containers(&state, false))
                .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline
            && pods.iter().any(|p| !p.finished.load(Ordering::SeqCst))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
