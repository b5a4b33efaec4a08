//! The API core: create, read, update, patch and delete with the apiserver's semantics
//! (admission, generation, finalizers, managed fields, optimistic concurrency). The HTTP layer
//! and the built-in controllers both go through here.
//!
//! Size (over 700 lines, on purpose): every verb shares one store lock and the admission → persist →
//! notify sequence; split by verb, that invariant would be spread over files.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use serde_json::{Value, json};

use crate::admission::{builtin, pod_security};
use crate::apply::{self, ListKeys};
use crate::patch;
use crate::resources::{Registry, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, Cause};
use crate::store::Store;

/// Simulator configuration fixed at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub cpu_per_node: String,
    pub memory_per_node: String,
    pub images: BTreeMap<String, PathBuf>,
    pub host: Ipv4Addr,
    pub port: u16,
    /// Second octet of this cluster's loopback range: pods get 127.N.<node>.<n>, Services
    /// 127.N.200+.<n>, so several simulators can run side by side.
    pub net: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

#[derive(Debug, Clone)]
pub struct WriteOpts {
    pub manager: String,
    pub dry_run: bool,
    pub validation: FieldValidation,
    pub subresource: String,
    pub force: bool,
}

impl WriteOpts {
    pub fn system(manager: &str) -> Self {
        Self {
            manager: manager.to_string(),
            dry_run: false,
            validation: FieldValidation::Ignore,
            subresource: String::new(),
            force: false,
        }
    }

    pub fn status(manager: &str) -> Self {
        Self {
            subresource: "status".into(),
            ..Self::system(manager)
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub grace_period: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

pub struct Written {
    pub obj: Arc<Value>,
    pub warnings: Vec<String>,
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

pub struct Cluster {
    pub registry: Registry,
    pub store: Store,
    pub cfg: Config,
    pub ca_pem: String,
    pub token_key: Vec<u8>,
    pub admin_token: String,
    ips: Mutex<()>,
    /// Controller passes in flight (kubelet and scheduler included), and whether controllers
    /// are halted: at shutdown no controller writes again once the passes in flight are done,
    /// so the saved state is what the cluster looked like before its node went down (a reboot,
    /// not a drain) rather than pods failed by the shutdown itself and their replacements.
    passes: Mutex<Passes>,
    passes_done: Condvar,
}

#[derive(Default)]
struct Passes {
    halted: bool,
    running: Vec<&'static str>,
}

/// Marks a controller pass finished, however it ends (a panicking pass too).
struct PassGuard<'a> {
    cluster: &'a Cluster,
    name: &'static str,
}

impl Drop for PassGuard<'_> {
    fn drop(&mut self) {
        let mut p = self
            .cluster
            .passes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(i) = p.running.iter().position(|n| *n == self.name) {
            p.running.swap_remove(i);
        }
        self.cluster.passes_done.notify_all();
    }
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Kinds whose strategies maintain `metadata.generation`.
fn tracks_generation(rt: &ResourceType) -> bool {
    rt.crd.is_some()
        || matches!(
            rt.plural.as_str(),
            "deployments"
                | "replicasets"
                | "jobs"
                | "customresourcedefinitions"
                | "poddisruptionbudgets"
                | "networkpolicies"
                | "horizontalpodautoscalers"
        )
}

/// The part of an object whose change bumps the generation.
fn spec_part(rt: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        if rt.has_status() {
            m.remove("status");
        }
    }
    o
}

/// Whether a pod update changes what runs (its containers or their images).
fn significant_pod_update(new: &Value, old: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|k| {
        let images = |p: &Value| -> Vec<Value> {
            p["spec"][*k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["image"].clone())
                .collect()
        };
        images(new) != images(old)
    }) || new["spec"]["ephemeralContainers"] != old["spec"]["ephemeralContainers"]
}

fn random_suffix() -> String {
    const CH: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CH[rand::random_range(0..CH.len())] as char)
        .collect()
}

impl Cluster {
    pub fn new(
        registry: Registry,
        store: Store,
        cfg: Config,
        ca_pem: String,
        token_key: Vec<u8>,
        admin_token: String,
    ) -> Self {
        Self {
            registry,
            store,
            cfg,
            ca_pem,
            token_key,
            admin_token,
            ips: Mutex::new(()),
            passes: Mutex::new(Passes::default()),
            passes_done: Condvar::new(),
        }
    }

    /// Run one pass of controller `name` unless the controllers are halted; false once they are.
    pub fn controller_pass(&self, name: &'static str, f: impl FnOnce()) -> bool {
        {
            let mut p = self.passes.lock().unwrap_or_else(|e| e.into_inner());
            if p.halted {
                return false;
            }
            p.running.push(name);
        }
        let _done = PassGuard {
            cluster: self,
            name,
        };
        f();
        true
    }

    /// Stop every controller for good: no pass starts any more, and the passes in flight are
    /// waited for up to `timeout`. Returns the controllers still in a pass then (none unless one
    /// is stuck: the shutdown goes on without it rather than hang). Blocks: call it off the
    /// async workers.
    pub fn halt_controllers(&self, timeout: std::time::Duration) -> Vec<&'static str> {
        let mut p = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        p.halted = true;
        let (p, _) = self
            .passes_done
            .wait_timeout_while(p, timeout, |p| !p.running.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        p.running.clone()
    }

    pub fn rt(&self, group: &str, plural: &str) -> ApiResult<Arc<ResourceType>> {
        self.registry
            .find_gr(group, plural)
            .ok_or_else(|| ApiError::not_found(group, plural, ""))
    }

    fn list_keys<'a>(&self, rt: &'a ResourceType) -> ListKeys<'a> {
        ListKeys {
            schema: rt.crd.as_ref().map(|c| &c.schema),
        }
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Arc<Value>> {
        let ns = if rt.namespaced { ns } else { "" };
        self.store
            .get(&rt.gr(), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// Objects of a type that match the selectors.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Arc<Value>>, u64) {
        let (items, rv) = self
            .store
            .list(&rt.gr(), if rt.namespaced { ns } else { None });
        let items = items
            .into_iter()
            .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
            .collect();
        (items, rv)
    }

    fn allocate_cluster_ip(&self) -> String {
        let _g = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let (svcs, _) = self.store.list("/services", None);
        let used: Vec<&str> = svcs
            .iter()
            .filter_map(|s| s["spec"]["clusterIP"].as_str())
            .collect();
        // Services live in 127.N.200.0-127.N.254.255, pods in 127.N.<node>.x: all loopback, so
        // they are reachable from every process here without any routing setup.
        let net = self.cfg.net;
        for i in 0..(54 * 250u32) {
            let ip = format!("127.{net}.{}.{}", 200 + i / 250, i % 250 + 1);
            if !used.contains(&ip.as_str()) {
                return ip;
            }
        }
        format!("127.{net}.254.254")
    }

    fn admit(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
        opts: &WriteOpts,
    ) -> ApiResult<Vec<String>> {
        let mut warnings = vec![];
        if let Some(crd) = &rt.crd {
            let unknown = crd.admit(obj, old, opts.validation == FieldValidation::Strict)?;
            if opts.validation == FieldValidation::Warn {
                warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")));
            }
        } else {
            match old {
                None => builtin::admit_create(&rt.plural, obj)?,
                Some(o) => builtin::admit_update(&rt.plural, obj, o)?,
            }
        }
        Ok(warnings)
    }

    /// The Priority admission plugin: a pod's priorityClassName must exist (its value becomes
    /// spec.priority); without one the global default class applies, else 0.
    fn admit_priority(&self, pod: &mut Value, name: &str) -> ApiResult<()> {
        let (classes, _) = self.store.list("scheduling.k8s.io/priorityclasses", None);
        let class = match pod["spec"]["priorityClassName"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            Some(c) => Some(
                classes
                    .iter()
                    .find(|p| p["metadata"]["name"].as_str() == Some(c))
                    .ok_or_else(|| {
                        ApiError::forbidden(format!(
                            "pods \"{name}\" is forbidden: no PriorityClass with name {c} was found"
                        ))
                    })?
                    .clone(),
            ),
            None => classes
                .iter()
                .find(|p| p["globalDefault"].as_bool() == Some(true))
                .cloned(),
        };
        match class {
            Some(c) => {
                pod["spec"]["priorityClassName"] = c["metadata"]["name"].clone();
                pod["spec"]["priority"] = json!(c["value"].as_i64().unwrap_or(0));
                if let Some(p) = c["preemptionPolicy"].as_str() {
                    pod["spec"]["preemptionPolicy"] = json!(p);
                }
            }
            None => pod["spec"]["priority"] = json!(0),
        }
        Ok(())
    }

    /// The PodSecurity admission plugin: namespace labels are validated, pods are refused by
    /// their namespace's enforce level, and pods and workload templates get its warnings.
    fn admit_pod_security(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: &Value,
        old: Option<&Value>,
        opts: &WriteOpts,
    ) -> ApiResult<Vec<String>> {
        if rt.crd.is_some() || !opts.subresource.is_empty() {
            return Ok(vec![]);
        }
        let labels = || {
            self.store
                .get("/namespaces", "", ns)
                .map(|n| n["metadata"]["labels"].clone())
                .unwrap_or(Value::Null)
        };
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                let (pods, _) = self.store.list("/pods", Some(name));
                let pods: Vec<&Value> = pods.iter().map(|p| &**p).collect();
                pod_security::admit_namespace(
                    name,
                    &obj["metadata"]["labels"],
                    old.map(|o| &o["metadata"]["labels"]),
                    &pods,
                )
                .map_err(|causes| ApiError::invalid("", "Namespace", name, causes))
            }
            ("", "pods") => {
                // Only a change of what runs is judged again (upstream isSignificantPodUpdate).
                if old.is_some_and(|o| !significant_pod_update(obj, o)) {
                    return Ok(vec![]);
                }
                pod_security::admit(&labels(), &obj["metadata"], &obj["spec"], true)
                    .map_err(|why| ApiError::forbidden_object("", "pods", name, &why))
            }
            ("apps", "deployments" | "replicasets") | ("batch", "jobs") => {
                let t = &obj["spec"]["template"];
                Ok(
                    pod_security::admit(&labels(), &t["metadata"], &t["spec"], false)
                        .unwrap_or_default(),
                )
            }
            _ => Ok(vec![]),
        }
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str) -> ApiResult<()> {
        if !rt.namespaced {
            return Ok(());
        }
        match self.store.get("/namespaces", "", ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let body_ns = obj["metadata"]["namespace"].as_str().map(String::from);
        if rt.namespaced {
            if let Some(b) = &body_ns
                && !b.is_empty()
                && b != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            match obj["metadata"]["generateName"].as_str() {
                Some(g) if !g.is_empty() => {
                    obj["metadata"]["name"] = json!(format!("{g}{}", random_suffix()))
                }
                _ => {
                    return Err(ApiError::invalid(
                        &rt.group,
                        &rt.kind,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired",
                            message: "Required value: name or generateName is required".into(),
                            field: "metadata.name".into(),
                        }],
                    ));
                }
            }
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if obj["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if let Some(c) = builtin::validate_name(&rt.plural, &name) {
            return Err(ApiError::invalid(&rt.group, &rt.kind, &name, vec![c]));
        }
        self.check_namespace(rt, ns)?;
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(new_uid());
        meta["creationTimestamp"] = json!(now());
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            if opts.manager != "-" {
                m.remove("managedFields");
            }
            m.remove("generation");
        }
        if tracks_generation(rt) {
            obj["metadata"]["generation"] = json!(1);
        }
        if rt.plural == "services" && rt.group.is_empty() {
            let ip = obj["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
            if ip.is_empty() {
                let ip = self.allocate_cluster_ip();
                obj["spec"]["clusterIP"] = json!(ip);
                obj["spec"]["clusterIPs"] = json!([ip]);
            } else {
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
        }
        if rt.has_status() && rt.crd.is_some() && opts.subresource.is_empty() {
            // Status is not set through the main resource of a CR with a status subresource.
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        let mut warnings = self.admit(rt, &mut obj, None, opts)?;
        if rt.group.is_empty() && rt.plural == "pods" {
            self.admit_priority(&mut obj, &name)?;
        }
        warnings.extend(self.admit_pod_security(rt, ns, &name, &obj, None, opts)?);
        if opts.manager != "-" {
            apply::track_update(
                None,
                &mut obj,
                &opts.manager,
                &rt.api_version(),
                "",
                &self.list_keys(rt),
            );
        }
        if opts.dry_run {
            return Ok(Written {
                obj: Arc::new(obj),
                warnings,
                created: true,
            });
        }
        let gr = rt.gr();
        let stored = self.store.put(
            &gr,
            obj,
            true,
            None,
            || ApiError::conflict_modified(&rt.group, &rt.plural, &name),
            || ApiError::already_exists(&rt.group, &rt.plural, &name),
            || ApiError::not_found(&rt.group, &rt.plural, &name),
        )?;
        Ok(Written {
            obj: stored,
            warnings,
            created: true,
        })
    }

    /// Replace an object (PUT, or the last step of a patch). `expect_rv` is what the caller
    /// based the change on; `None` means an unconditional update.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        let ns = if rt.namespaced { ns } else { "" };
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(n) = obj["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let expect = obj["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        for _ in 0..8 {
            let old = self.get(rt, ns, name)?;
            let mut new = obj.clone();
            let based_on = expect.clone().unwrap_or_else(|| {
                old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            });
            if expect.is_some()
                && Some(based_on.as_str()) != old["metadata"]["resourceVersion"].as_str()
            {
                return Err(ApiError::conflict_modified(&rt.group, &rt.plural, name));
            }
            new["apiVersion"] = json!(rt.api_version());
            new["kind"] = json!(rt.kind);
            // Immutable and server-owned metadata.
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match old["metadata"].get(k) {
                    Some(v) => new["metadata"][k] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(k);
                        }
                    }
                }
            }
            if opts.subresource == "status" {
                let status = new.get("status").cloned();
                let mut merged = (*old).clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                // A status apply computed its managedFields (manager "-"): keep them, so the
                // next apply by the same manager removes the status fields it stops applying.
                // Other status writes are tracked below from the old ones.
                let mf = if opts.manager == "-" { &new } else { &*old };
                merged["metadata"]["managedFields"] = mf["metadata"]["managedFields"].clone();
                new = merged;
            } else if rt.has_status() {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if !old["metadata"]["deletionTimestamp"].is_null() {
                let old_f: Vec<Value> = old["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let added = new["metadata"]["finalizers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|f| !old_f.contains(f));
                if added {
                    return Err(ApiError::invalid(&rt.group, &rt.kind, name, vec![Cause {
                        reason: "FieldValueForbidden",
                        message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                        field: "metadata.finalizers".into(),
                    }]));
                }
            }
            let warnings = if opts.subresource == "status" && rt.crd.is_none() {
                vec![]
            } else {
                // Status writes of custom resources are validated against the schema too.
                let mut w = self.admit(rt, &mut new, Some(&old), opts)?;
                w.extend(self.admit_pod_security(rt, ns, name, &new, Some(&old), opts)?);
                w
            };
            if tracks_generation(rt) {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let bump = spec_part(rt, &old) != spec_part(rt, &new);
                new["metadata"]["generation"] = json!(if bump { g + 1 } else { g });
            }
            if opts.manager != "-" {
                apply::track_update(
                    Some(&old),
                    &mut new,
                    &opts.manager,
                    &rt.api_version(),
                    &opts.subresource,
                    &self.list_keys(rt),
                );
            }
            if *old == new {
                return Ok(Written {
                    obj: old,
                    warnings,
                    created: false,
                });
            }
            if opts.dry_run {
                return Ok(Written {
                    obj: Arc::new(new),
                    warnings,
                    created: false,
                });
            }
            let finalized = !old["metadata"]["deletionTimestamp"].is_null()
                && new["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty());
            match self.store.put(
                &rt.gr(),
                new,
                false,
                Some(&based_on),
                || ApiError::conflict_modified(&rt.group, &rt.plural, name),
                || ApiError::already_exists(&rt.group, &rt.plural, name),
                || ApiError::not_found(&rt.group, &rt.plural, name),
            ) {
                Ok(stored) => {
                    if finalized {
                        self.store
                            .remove(&rt.gr(), ns, name, stored["metadata"]["uid"].as_str());
                    }
                    return Ok(Written {
                        obj: stored,
                        warnings,
                        created: false,
                    });
                }
                Err(e) if e.code == 409 && expect.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict_modified(&rt.group, &rt.plural, name))
    }

    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        pt: PatchType,
        body: &Value,
        opts: &WriteOpts,
    ) -> ApiResult<Written> {
        let ns = if rt.namespaced { ns } else { "" };
        if pt == PatchType::Strategic && rt.crd.is_some() {
            return Err(ApiError::unsupported_media(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        for _ in 0..8 {
            let old = match self.get(rt, ns, name) {
                Ok(o) => o,
                Err(e)
                    if e.code == 404 && pt == PatchType::Apply && opts.subresource.is_empty() =>
                {
                    let ctx = self.apply_ctx(rt, name, opts);
                    let mut obj = apply::apply(None, body, &ctx)?;
                    obj["metadata"]["name"] = json!(name);
                    let mut o = opts.clone();
                    o.manager = "-".into();
                    return self.create(rt, ns, obj, &o);
                }
                Err(e) => return Err(e),
            };
            let rv = old["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let mut new = (*old).clone();
            match pt {
                PatchType::Merge => patch::merge_patch(&mut new, body),
                PatchType::Json => patch::json_patch(&mut new, body)?,
                PatchType::Strategic => patch::strategic_merge(&mut new, body)?,
                PatchType::Apply => {
                    let ctx = self.apply_ctx(rt, name, opts);
                    let mut cfg = body.clone();
                    if opts.subresource == "status" {
                        // Only the status of an applied config counts on the status subresource.
                        cfg = json!({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": name}, "status": body["status"]});
                    }
                    new = apply::apply(Some(&old), &cfg, &ctx)?;
                }
            }
            // A patch that carries a resourceVersion is a precondition.
            let body_rv = new["metadata"]["resourceVersion"]
                .as_str()
                .map(String::from);
            let precondition = matches!(
                pt,
                PatchType::Merge | PatchType::Strategic | PatchType::Json
            ) && body_rv.as_deref().is_some_and(|b| b != rv);
            if precondition {
                return Err(ApiError::conflict_modified(&rt.group, &rt.plural, name));
            }
            new["metadata"]["resourceVersion"] = json!(rv);
            let mut o = opts.clone();
            if pt == PatchType::Apply {
                // managedFields were computed by apply itself.
                o.manager = "-".into();
            }
            match self.update(rt, ns, name, new, &o) {
                Err(e)
                    if e.code == 409
                        && e.reason == "Conflict"
                        && e.message.contains("has been modified") =>
                {
                    continue;
                }
                other => return other,
            }
        }
        Err(ApiError::conflict_modified(&rt.group, &rt.plural, name))
    }

    fn apply_ctx<'a>(
        &self,
        rt: &'a ResourceType,
        name: &'a str,
        opts: &'a WriteOpts,
    ) -> apply::ApplyCtx<'a> {
        apply::ApplyCtx {
            group: &rt.group,
            plural: &rt.plural,
            name,
            api_version: rt.api_version(),
            manager: &opts.manager,
            force: opts.force,
            subresource: &opts.subresource,
            list_keys: self.list_keys(rt),
        }
    }

    /// Delete honouring finalizers, graceful pod termination and the propagation policy.
    /// Returns the object as it now is and whether it is gone.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<(Arc<Value>, bool)> {
        let ns = if rt.namespaced { ns } else { "" };
        for _ in 0..8 {
            let cur = self.get(rt, ns, name)?;
            let uid = cur["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if let Some(u) = &opts.precondition_uid
                && *u != uid
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {u}, UID in object meta: {uid}"
                    ),
                ));
            }
            if let Some(r) = &opts.precondition_rv
                && Some(r.as_str()) != cur["metadata"]["resourceVersion"].as_str()
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {}",
                        cur["metadata"]["resourceVersion"].as_str().unwrap_or("")
                    ),
                ));
            }
            if opts.dry_run {
                return Ok((cur, false));
            }
            let default_policy = if rt.group == "batch" && rt.plural == "jobs" {
                "Orphan"
            } else {
                "Background"
            };
            let policy = opts
                .propagation
                .clone()
                .unwrap_or_else(|| default_policy.to_string());
            if policy == "Orphan" {
                self.orphan_dependents(&uid);
            }
            let mut new = (*cur).clone();
            let mut finalizers: Vec<Value> = new["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if policy == "Foreground"
                && !finalizers.contains(&json!("foregroundDeletion"))
                && self.has_dependents(&uid)
            {
                finalizers.push(json!("foregroundDeletion"));
            }
            let graceful_pod = rt.group.is_empty()
                && rt.plural == "pods"
                && cur["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                && !matches!(
                    cur["status"]["phase"].as_str(),
                    Some("Succeeded") | Some("Failed")
                )
                && opts.grace_period != Some(0);
            let is_ns = rt.group.is_empty() && rt.plural == "namespaces";
            if finalizers.is_empty() && !graceful_pod && !is_ns {
                match self.store.remove(&rt.gr(), ns, name, Some(&uid)) {
                    Some(o) => return Ok((o, true)),
                    None => continue,
                }
            }
            if cur["metadata"]["deletionTimestamp"].is_null() {
                let grace = if graceful_pod {
                    opts.grace_period
                        .or_else(|| cur["spec"]["terminationGracePeriodSeconds"].as_i64())
                        .unwrap_or(30)
                } else {
                    0
                };
                new["metadata"]["deletionTimestamp"] = json!(now());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if tracks_generation(rt) {
                    let g = new["metadata"]["generation"].as_i64().unwrap_or(1);
                    new["metadata"]["generation"] = json!(g + 1);
                }
            } else if graceful_pod && opts.grace_period.is_some() {
                new["metadata"]["deletionGracePeriodSeconds"] = json!(opts.grace_period);
            }
            if !finalizers.is_empty() {
                new["metadata"]["finalizers"] = Value::Array(finalizers);
            }
            if is_ns {
                new["status"]["phase"] = json!("Terminating");
            }
            if new == *cur {
                return Ok((cur, false));
            }
            let rv = cur["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            match self.store.put(
                &rt.gr(),
                new,
                false,
                Some(&rv),
                || ApiError::conflict_modified(&rt.group, &rt.plural, name),
                || ApiError::already_exists(&rt.group, &rt.plural, name),
                || ApiError::not_found(&rt.group, &rt.plural, name),
            ) {
                Ok(o) => return Ok((o, false)),
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict_modified(&rt.group, &rt.plural, name))
    }

    /// Remove an object now, whatever its finalizers (kubelet after termination, namespace cleanup).
    pub fn force_remove(&self, rt: &ResourceType, ns: &str, name: &str, uid: Option<&str>) {
        self.store
            .remove(&rt.gr(), if rt.namespaced { ns } else { "" }, name, uid);
    }

    fn dependents_of(&self, uid: &str) -> Vec<(Arc<ResourceType>, Arc<Value>)> {
        let mut out = vec![];
        for gr in self.store.types() {
            let Some((g, p)) = gr.split_once('/') else {
                continue;
            };
            let Some(rt) = self.registry.find_gr(g, p) else {
                continue;
            };
            let (items, _) = self.store.list(&gr, None);
            for o in items {
                if o["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["uid"].as_str() == Some(uid))
                {
                    out.push((rt.clone(), o));
                }
            }
        }
        out
    }

    pub fn has_dependents(&self, uid: &str) -> bool {
        !self.dependents_of(uid).is_empty()
    }

    pub fn dependents(&self, uid: &str) -> Vec<(Arc<ResourceType>, Arc<Value>)> {
        self.dependents_of(uid)
    }

    fn orphan_dependents(&self, uid: &str) {
        for (rt, o) in self.dependents_of(uid) {
            let mut n = (*o).clone();
            if let Some(refs) = n["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
            }
            if n["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.is_empty())
                && let Some(m) = n["metadata"].as_object_mut()
            {
                m.remove("ownerReferences");
            }
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            let _ = self.update(&rt, ns, name, n, &WriteOpts::system("garbage-collector"));
        }
    }
}
