//! Pod Security Admission, as the apiserver's built-in `PodSecurity` plugin (k8s.io/pod-security-admission
//! v0.32, the simulator's version): the namespace labels `pod-security.kubernetes.io/<mode>` and
//! `<mode>-version` choose a level (`privileged`, `baseline`, `restricted`) per mode; `enforce`
//! refuses pods, `warn` answers with warnings, for pods and for the pod templates of workload
//! objects alike (templates are never refused, as in Kubernetes). Checks, their order, their
//! versions and every message are the upstream ones, so what a user reads here is what a cluster
//! would say. `audit` is parsed but there is no audit log to write to.
//!
//! Size (over 700 lines, on purpose): a transcription of the upstream check list, one function per
//! check in upstream order beside the level table that orders them; the tests are in `tests.rs`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::status::Cause;

const PREFIX: &str = "pod-security.kubernetes.io/";
/// The newest version with its own check variants in v0.32; `latest` and newer versions
/// evaluate as this one.
const MAX_MINOR: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A level at a version of the standards; `minor` None is `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelVersion {
    pub level: Level,
    pub minor: Option<u32>,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.minor {
            None => write!(f, "{}:latest", self.level.name()),
            Some(m) => write!(f, "{}:v1.{m}", self.level.name()),
        }
    }
}

impl LevelVersion {
    const PRIVILEGED: LevelVersion = LevelVersion {
        level: Level::Privileged,
        minor: None,
    };

    /// The minor version the checks run at.
    fn minor(self) -> u32 {
        self.minor.unwrap_or(MAX_MINOR).min(MAX_MINOR)
    }
}

/// What a namespace asks for, per mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

fn parse_version(s: &str) -> Option<Option<u32>> {
    if s == "latest" {
        return Some(None);
    }
    // Upstream's `^v1\.(0|[1-9][0-9]*)$`.
    let n = s.strip_prefix("v1.")?;
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok().map(Some)
}

/// The policy a namespace's labels ask for (upstream `PolicyToEvaluate`, with the default
/// configuration: privileged:latest everywhere), and one cause per label that does not parse.
/// A bad enforce level fails closed (restricted), bad warn and audit levels fail open.
pub fn policy(labels: &Value) -> (Policy, Vec<Cause>) {
    let mut p = Policy {
        enforce: LevelVersion::PRIVILEGED,
        audit: LevelVersion::PRIVILEGED,
        warn: LevelVersion::PRIVILEGED,
    };
    let mut causes = vec![];
    let label = |mode: &str| labels[format!("{PREFIX}{mode}")].as_str().map(String::from);
    let mut bad = |key: &str, value: &str, msg: &str| {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {msg}"),
            field: format!("metadata.labels[{PREFIX}{key}]"),
        })
    };
    const LEVELS: &str = "must be one of privileged, baseline, restricted";
    const VERSIONS: &str = "must be \"latest\" or \"v1.x\"";
    let mut has_enforce_level = false;
    let (mut has_warn_level, mut has_warn_version) = (false, false);
    for mode in ["enforce", "audit", "warn"] {
        let lv = match mode {
            "enforce" => &mut p.enforce,
            "audit" => &mut p.audit,
            _ => &mut p.warn,
        };
        if let Some(l) = label(mode) {
            match Level::parse(&l) {
                Some(level) => {
                    lv.level = level;
                    has_enforce_level |= mode == "enforce";
                }
                None => {
                    lv.level = if mode == "enforce" {
                        Level::Restricted
                    } else {
                        Level::Privileged
                    };
                    bad(mode, &l, LEVELS);
                }
            }
            has_warn_level |= mode == "warn";
        }
        let vkey = format!("{mode}-version");
        if let Some(v) = label(&vkey) {
            match parse_version(&v) {
                Some(minor) => lv.minor = minor,
                None => {
                    lv.minor = None;
                    bad(&vkey, &v, VERSIONS);
                }
            }
            has_warn_version |= mode == "warn";
        }
    }
    // Warn at least at the enforced level unless the namespace says otherwise.
    if !has_warn_level && has_enforce_level && p.enforce.level > p.warn.level {
        p.warn.level = p.enforce.level;
        if !has_warn_version {
            p.warn.minor = p.enforce.minor;
        }
    }
    (p, causes)
}

/// One failed check: its reason, and the detail shown in parentheses (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

/// Every violation of `lv` by a pod (metadata and spec), in the upstream order: the baseline
/// checks by ID, then the restricted ones by ID (a restricted check replaces the baseline check
/// it overrides).
pub fn evaluate(lv: LevelVersion, meta: &Value, spec: &Value) -> Vec<Violation> {
    if lv.level == Level::Privileged {
        return vec![];
    }
    let v = lv.minor();
    let restricted = lv.level == Level::Restricted;
    let pod = Pod::new(meta, spec);
    // (check, applies): baseline checks first, each group sorted by upstream check ID.
    let checks: [(Check, bool); 17] = [
        (app_armor_profile, true),
        (capabilities_baseline, !(restricted && v >= 22)),
        (host_namespaces, true),
        (host_path_volumes, !restricted),
        (host_ports, true),
        (privileged, true),
        (proc_mount, true),
        (se_linux_options, true),
        (seccomp_baseline, !(restricted && v >= 19)),
        (sysctls, true),
        (windows_host_process, true),
        (allow_privilege_escalation, restricted && v >= 8),
        (capabilities_restricted, restricted && v >= 22),
        (restricted_volumes, restricted),
        (run_as_non_root, restricted),
        (run_as_user, restricted && v >= 23),
        (seccomp_restricted, restricted && v >= 19),
    ];
    checks
        .iter()
        .filter(|(_, on)| *on)
        .filter_map(|(check, _)| check(&pod, v))
        .collect()
}

/// `reason (detail), reason, ...` as the apiserver joins violations.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|x| {
            if x.detail.is_empty() {
                x.reason.clone()
            } else {
                format!("{} ({})", x.reason, x.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What admission says about a pod (or a workload's pod template) in a namespace with `labels`:
/// `Err(message)` when the enforce level refuses it (only `enforce` is true for pods), else the
/// warnings to return.
pub fn admit(
    labels: &Value,
    meta: &Value,
    spec: &Value,
    enforce: bool,
) -> Result<Vec<String>, String> {
    let (p, _) = policy(labels);
    if enforce {
        let v = evaluate(p.enforce, meta, spec);
        if !v.is_empty() {
            return Err(format!(
                "violates PodSecurity \"{}\": {}",
                p.enforce,
                describe(&v)
            ));
        }
    }
    let v = evaluate(p.warn, meta, spec);
    if v.is_empty() {
        Ok(vec![])
    } else {
        Ok(vec![format!(
            "would violate PodSecurity \"{}\": {}",
            p.warn,
            describe(&v)
        )])
    }
}

/// Admission of a namespace create (`old` None) or update: labels that do not parse are refused
/// (on update only when they changed), and raising the enforce level warns about the pods
/// already there that the new level would refuse.
pub fn admit_namespace(
    ns: &str,
    labels: &Value,
    old_labels: Option<&Value>,
    pods: &[&Value],
) -> Result<Vec<String>, Vec<Cause>> {
    let (new, causes) = policy(labels);
    let Some(old_labels) = old_labels else {
        return if causes.is_empty() {
            Ok(vec![])
        } else {
            Err(causes)
        };
    };
    let (old, old_causes) = policy(old_labels);
    let same = |a: &[Cause], b: &[Cause]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.field == y.field && x.message == y.message)
    };
    if !causes.is_empty() && (old_causes.is_empty() || !same(&causes, &old_causes)) {
        return Err(causes);
    }
    if new.enforce == old.enforce
        || new.enforce.level == Level::Privileged
        || (new.enforce.minor == old.enforce.minor && new.enforce.level <= old.enforce.level)
    {
        return Ok(vec![]);
    }
    Ok(existing_pod_warnings(ns, new.enforce, pods))
}

/// Warnings for a namespace whose enforce level was raised: which existing pods violate it
/// (upstream `EvaluatePodsInNamespace`: one line per distinct set of reasons, naming the first
/// pod by name and counting the others; one pod per controller is looked at first).
pub fn existing_pod_warnings(ns: &str, enforce: LevelVersion, pods: &[&Value]) -> Vec<String> {
    // Pods without a controller, then one per controller, then the controllers' other pods.
    let mut seen_owners = BTreeSet::new();
    let (mut first, mut rest): (Vec<&Value>, Vec<&Value>) = (vec![], vec![]);
    for &p in pods {
        let owner = p["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"].as_bool() == Some(true))
            .and_then(|r| r["uid"].as_str());
        match owner {
            Some(uid) if !seen_owners.insert(uid.to_string()) => rest.push(p),
            _ => first.push(p),
        }
    }
    first.extend(rest);
    // reason list → (first pod name by name, count), in order of first appearance.
    let mut found: Vec<(String, String, usize)> = vec![];
    for p in first {
        let v = evaluate(enforce, &p["metadata"], &p["spec"]);
        if v.is_empty() {
            continue;
        }
        let reasons = v
            .iter()
            .map(|x| x.reason.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        match found.iter_mut().find(|(r, _, _)| *r == reasons) {
            Some(entry) => {
                if name < entry.1 {
                    entry.1 = name;
                }
                entry.2 += 1;
            }
            None => found.push((reasons, name, 1)),
        }
    }
    if found.is_empty() {
        return vec![];
    }
    let mut lines: Vec<String> = found
        .into_iter()
        .map(|(reasons, name, n)| match n {
            1 => format!("{name}: {reasons}"),
            2 => format!("{name} (and 1 other pod): {reasons}"),
            _ => format!("{name} (and {} other pods): {reasons}", n - 1),
        })
        .collect();
    lines.sort();
    let mut out = vec![format!(
        "existing pods in namespace {ns:?} violate the new PodSecurity enforce level \"{enforce}\""
    )];
    out.extend(lines);
    out
}

/// One Pod Security Standards check, at a minor version of the standards.
type Check = fn(&Pod<'_>, u32) -> Option<Violation>;

/// The pod parts the checks read.
struct Pod<'a> {
    meta: &'a Value,
    spec: &'a Value,
    /// Init containers, containers and ephemeral containers, in that order (upstream's visitor).
    containers: Vec<&'a Value>,
}

impl<'a> Pod<'a> {
    fn new(meta: &'a Value, spec: &'a Value) -> Self {
        let containers = ["initContainers", "containers", "ephemeralContainers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten())
            .collect();
        Self {
            meta,
            spec,
            containers,
        }
    }

    fn windows(&self) -> bool {
        self.spec["os"]["name"].as_str() == Some("windows")
    }

    fn psc(&self) -> &'a Value {
        &self.spec["securityContext"]
    }

    fn annotations(&self) -> Vec<(&'a str, &'a str)> {
        self.meta["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
            .collect()
    }
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_string()
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", inner.join("\", \""))
}

fn pluralize<'s>(singular: &'s str, plural: &'s str, n: usize) -> &'s str {
    if n == 1 { singular } else { plural }
}

/// `container "a"` / `containers "a", "b"`.
fn containers_named(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

fn violation(reason: &str, detail: String) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail,
    })
}

fn app_armor_profile(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let allowed_type = |t: &Value| matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"));
    let mut setters = vec![];
    let mut bad_values = BTreeSet::new();
    let pod_profile = &p.psc()["appArmorProfile"];
    if pod_profile.is_object() && !allowed_type(&pod_profile["type"]) {
        setters.push("pod".to_string());
        bad_values.insert(pod_profile["type"].as_str().unwrap_or("").to_string());
    }
    let mut bad = vec![];
    for c in &p.containers {
        let prof = &c["securityContext"]["appArmorProfile"];
        if prof.is_object() && !allowed_type(&prof["type"]) {
            bad.push(name(c));
            bad_values.insert(prof["type"].as_str().unwrap_or("").to_string());
        }
    }
    if !bad.is_empty() {
        setters.push(containers_named(&bad));
    }
    let mut values: Vec<String> = bad_values.into_iter().collect();
    let mut forbidden_annotations: Vec<String> = p
        .annotations()
        .into_iter()
        .filter(|(k, v)| {
            k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    if !forbidden_annotations.is_empty() {
        forbidden_annotations.sort();
        setters.push(pluralize("annotation", "annotations", forbidden_annotations.len()).into());
        values.extend(forbidden_annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

fn capabilities_baseline(p: &Pod<'_>, _: u32) -> Option<Violation> {
    const ALLOWED: [&str; 13] = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let mut bad = vec![];
    let mut caps = BTreeSet::new();
    for c in &p.containers {
        let mut ok = true;
        for cap in c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let cap = cap.as_str().unwrap_or("");
            if !ALLOWED.contains(&cap) {
                ok = false;
                caps.insert(cap.to_string());
            }
        }
        if !ok {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let caps: Vec<String> = caps.into_iter().collect();
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&bad),
            join_quote(&caps)
        ),
    )
}

fn host_namespaces(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let set: Vec<&str> = [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ]
    .iter()
    .filter(|(k, _)| p.spec[*k].as_bool() == Some(true))
    .map(|(_, s)| *s)
    .collect();
    if set.is_empty() {
        return None;
    }
    violation("host namespaces", set.join(", "))
}

fn volumes<'a>(p: &Pod<'a>) -> impl Iterator<Item = &'a Value> {
    p.spec["volumes"].as_array().into_iter().flatten()
}

fn host_path_volumes(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let names: Vec<String> = volumes(p)
        .filter(|v| v["hostPath"].is_object())
        .map(name)
        .collect();
    if names.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", names.len()),
            join_quote(&names)
        ),
    )
}

fn host_ports(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let mut bad = vec![];
    let mut ports = BTreeSet::new();
    for c in &p.containers {
        let mut ok = true;
        for port in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = port["hostPort"].as_i64().filter(|h| *h != 0) {
                ok = false;
                ports.insert(hp.to_string());
            }
        }
        if !ok {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    // Sorted as strings, as upstream's string set.
    let ports: Vec<String> = ports.into_iter().collect();
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_named(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn privileged(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let bad: Vec<String> = p
        .containers
        .iter()
        .filter(|c| c["securityContext"]["privileged"].as_bool() == Some(true))
        .map(|c| name(c))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_named(&bad)
        ),
    )
}

fn proc_mount(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let mut bad = vec![];
    let mut types = BTreeSet::new();
    for c in &p.containers {
        if let Some(t) = c["securityContext"]["procMount"].as_str()
            && t != "Default"
        {
            bad.push(name(c));
            types.insert(t.to_string());
        }
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_named(&bad),
            join_quote(&types)
        ),
    )
}

fn se_linux_options(p: &Pod<'_>, v: u32) -> Option<Violation> {
    let mut allowed = vec!["", "container_t", "container_init_t", "container_kvm_t"];
    if v >= 31 {
        allowed.push("container_engine_t");
    }
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |o: &Value| {
        let mut ok = true;
        let t = o["type"].as_str().unwrap_or("");
        if !allowed.contains(&t) {
            ok = false;
            bad_types.insert(t.to_string());
        }
        if o["user"].as_str().is_some_and(|u| !u.is_empty()) {
            ok = false;
            set_user = true;
        }
        if o["role"].as_str().is_some_and(|r| !r.is_empty()) {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut setters = vec![];
    let pod_opts = &p.psc()["seLinuxOptions"];
    if pod_opts.is_object() && !valid(pod_opts) {
        setters.push("pod".to_string());
    }
    let mut bad = vec![];
    for c in &p.containers {
        let o = &c["securityContext"]["seLinuxOptions"];
        if o.is_object() && !valid(o) {
            bad.push(name(c));
        }
    }
    if !bad.is_empty() {
        setters.push(containers_named(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = vec![];
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        data.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if set_user {
        data.push("user may not be set".to_string());
    }
    if set_role {
        data.push("role may not be set".to_string());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

fn valid_seccomp(t: &Value) -> bool {
    matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"))
}

fn seccomp_baseline(p: &Pod<'_>, v: u32) -> Option<Violation> {
    if v < 19 {
        // Before 1.19 the profile was set by annotations.
        let ok = |val: &str| {
            val == "runtime/default" || val == "docker/default" || val.starts_with("localhost/")
        };
        let ann = p.annotations();
        let mut forbidden = BTreeSet::new();
        let pod_key = "seccomp.security.alpha.kubernetes.io/pod";
        let mut keys = vec![pod_key.to_string()];
        keys.extend(
            p.containers
                .iter()
                .map(|c| format!("container.seccomp.security.alpha.kubernetes.io/{}", name(c))),
        );
        for key in keys {
            if let Some((k, val)) = ann.iter().find(|(k, _)| *k == key)
                && !ok(val)
            {
                forbidden.insert(format!("{k}={val:?}"));
            }
        }
        if forbidden.is_empty() {
            return None;
        }
        let list: Vec<String> = forbidden.into_iter().collect();
        return violation(
            "seccompProfile",
            format!(
                "forbidden {} {}",
                pluralize("annotation", "annotations", list.len()),
                list.join(", ")
            ),
        );
    }
    let mut setters = vec![];
    let mut values = BTreeSet::new();
    let pod_prof = &p.psc()["seccompProfile"];
    if pod_prof.is_object() && !valid_seccomp(&pod_prof["type"]) {
        setters.push("pod".to_string());
        values.insert(pod_prof["type"].as_str().unwrap_or("").to_string());
    }
    let mut bad = vec![];
    for c in &p.containers {
        let prof = &c["securityContext"]["seccompProfile"];
        if prof.is_object() && !valid_seccomp(&prof["type"]) {
            bad.push(name(c));
            values.insert(prof["type"].as_str().unwrap_or("").to_string());
        }
    }
    if !bad.is_empty() {
        setters.push(containers_named(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let values: Vec<String> = values.into_iter().collect();
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

fn sysctls(p: &Pod<'_>, v: u32) -> Option<Violation> {
    let mut allowed = vec![
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    if v >= 27 {
        allowed.push("net.ipv4.ip_local_reserved_ports");
    }
    if v >= 29 {
        allowed.extend([
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ]);
    }
    if v >= 32 {
        allowed.extend(["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]);
    }
    let bad: Vec<&str> = p.psc()["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !allowed.contains(n))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

fn windows_host_process(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let host_process = |sc: &Value| sc["windowsOptions"]["hostProcess"].as_bool() == Some(true);
    let mut setters = vec![];
    if host_process(p.psc()) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = p
        .containers
        .iter()
        .filter(|c| host_process(&c["securityContext"]))
        .map(|c| name(c))
        .collect();
    if !bad.is_empty() {
        setters.push(containers_named(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

fn allow_privilege_escalation(p: &Pod<'_>, v: u32) -> Option<Violation> {
    if v >= 25 && p.windows() {
        return None;
    }
    let bad: Vec<String> = p
        .containers
        .iter()
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false))
        .map(|c| name(c))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_named(&bad)
        ),
    )
}

fn capabilities_restricted(p: &Pod<'_>, v: u32) -> Option<Violation> {
    if v >= 25 && p.windows() {
        return None;
    }
    let mut missing_drop_all = vec![];
    let mut adding = vec![];
    let mut forbidden = BTreeSet::new();
    for c in &p.containers {
        let caps = &c["securityContext"]["capabilities"];
        if !caps.is_object() {
            missing_drop_all.push(name(c));
            continue;
        }
        let dropped_all = caps["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d == "ALL");
        if !dropped_all {
            missing_drop_all.push(name(c));
        }
        let mut adds_forbidden = false;
        for a in caps["add"].as_array().into_iter().flatten() {
            let a = a.as_str().unwrap_or("");
            if a != "NET_BIND_SERVICE" {
                adds_forbidden = true;
                forbidden.insert(a.to_string());
            }
        }
        if adds_forbidden {
            adding.push(name(c));
        }
    }
    let mut details = vec![];
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_named(&missing_drop_all)
        ));
    }
    if !adding.is_empty() {
        let caps: Vec<String> = forbidden.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&adding),
            join_quote(&caps)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

fn restricted_volumes(p: &Pod<'_>, _: u32) -> Option<Violation> {
    const ALLOWED: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    const KNOWN: [&str; 22] = [
        "hostPath",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "nfs",
        "iscsi",
        "glusterfs",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "fc",
        "azureFile",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "unknown",
    ];
    let mut bad = vec![];
    let mut types = BTreeSet::new();
    for vol in volumes(p) {
        if ALLOWED.iter().any(|k| vol[*k].is_object()) {
            continue;
        }
        bad.push(name(vol));
        let t = KNOWN
            .iter()
            .find(|k| vol[**k].is_object())
            .copied()
            .unwrap_or("unknown");
        types.insert(t.to_string());
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&types)
        ),
    )
}

fn run_as_non_root(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let mut setters = vec![];
    let mut pod_non_root = false;
    match p.psc()["runAsNonRoot"].as_bool() {
        Some(false) => setters.push("pod".to_string()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let (mut explicit, mut implicit) = (vec![], vec![]);
    for c in &p.containers {
        match c["securityContext"]["runAsNonRoot"].as_bool() {
            Some(false) => explicit.push(name(c)),
            Some(true) => {}
            None if !pod_non_root => implicit.push(name(c)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_named(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    violation(
        "runAsNonRoot != true",
        format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_named(&implicit)
        ),
    )
}

fn run_as_user(p: &Pod<'_>, _: u32) -> Option<Violation> {
    let mut setters = vec![];
    if p.psc()["runAsUser"].as_i64() == Some(0) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = p
        .containers
        .iter()
        .filter(|c| c["securityContext"]["runAsUser"].as_i64() == Some(0))
        .map(|c| name(c))
        .collect();
    if !bad.is_empty() {
        setters.push(containers_named(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters.join(" and ")),
    )
}

fn seccomp_restricted(p: &Pod<'_>, v: u32) -> Option<Violation> {
    if v >= 25 && p.windows() {
        return None;
    }
    let mut setters = vec![];
    let mut values = BTreeSet::new();
    let mut pod_set = false;
    let pod_prof = &p.psc()["seccompProfile"];
    if pod_prof.is_object() {
        if valid_seccomp(&pod_prof["type"]) {
            pod_set = true;
        } else {
            setters.push("pod".to_string());
            values.insert(pod_prof["type"].as_str().unwrap_or("").to_string());
        }
    }
    let (mut explicit, mut implicit) = (vec![], vec![]);
    for c in &p.containers {
        let prof = &c["securityContext"]["seccompProfile"];
        if prof.is_object() {
            if !valid_seccomp(&prof["type"]) {
                explicit.push(name(c));
                values.insert(prof["type"].as_str().unwrap_or("").to_string());
            }
        } else if !pod_set {
            implicit.push(name(c));
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_named(&explicit));
    }
    if !setters.is_empty() {
        let values: Vec<String> = values.into_iter().collect();
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&values)
            ),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_named(&implicit)
        ),
    )
}

#[cfg(test)]
mod tests;
