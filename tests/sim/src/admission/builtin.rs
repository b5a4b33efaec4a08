//! Defaulting and validation of the built-in kinds the simulator stores, as the apiserver's
//! registry strategies do it (the parts clients observe).

use base64::Engine;
use serde_json::{Value, json};

use crate::status::{ApiError, Cause};

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validate `metadata.name` the way each kind's strategy does.
pub fn validate_name(plural: &str, name: &str) -> Option<Cause> {
    let label_only = matches!(plural, "namespaces" | "services");
    let rbac_path = matches!(
        plural,
        "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings"
    );
    if rbac_path {
        if name.is_empty()
            || name.contains('/')
            || name.contains('%')
            || name == "."
            || name == ".."
        {
            return Some(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {name:?}: may not contain '/' or '%'"),
                field: "metadata.name".into(),
            });
        }
        return None;
    }
    if name.contains(':') && plural == "nodes" {
        return None;
    }
    let ok = if label_only {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if ok {
        return None;
    }
    let msg = if label_only {
        format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        )
    } else {
        format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
    };
    Some(Cause {
        reason: "FieldValueInvalid",
        message: msg,
        field: "metadata.name".into(),
    })
}

fn set_default(v: &mut Value, key: &str, d: Value) {
    if let Some(m) = v.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.to_string(), d);
    }
}

pub fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "serviceAccountName", json!("default"));
    let sa = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", sa);
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            let policy = if c["image"]
                .as_str()
                .is_some_and(|i| i.ends_with(":latest") || !i.contains(':'))
            {
                "Always"
            } else {
                "IfNotPresent"
            };
            set_default(c, "imagePullPolicy", json!(policy));
            set_default(c, "resources", json!({}));
            for p in c["ports"].as_array_mut().into_iter().flatten() {
                set_default(p, "protocol", json!("TCP"));
            }
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                if c[probe].is_object() {
                    let p = &mut c[probe];
                    set_default(p, "periodSeconds", json!(10));
                    set_default(p, "timeoutSeconds", json!(1));
                    set_default(p, "successThreshold", json!(1));
                    set_default(p, "failureThreshold", json!(3));
                    if p["httpGet"].is_object() {
                        set_default(&mut p["httpGet"], "path", json!("/"));
                        set_default(&mut p["httpGet"], "scheme", json!("HTTP"));
                    }
                }
            }
        }
    }
}

/// A path that must stay inside what it is relative to (subPath, subPathExpr), in the words of
/// the apiserver's validateLocalDescendingPath.
fn validate_local_descending_path(p: &str, field: String, causes: &mut Vec<Cause>) {
    if p.starts_with('/') {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {p:?}: must be a relative path"),
            field: field.clone(),
        });
    }
    if p.split('/').any(|c| c == "..") {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {p:?}: must not contain '..'"),
            field,
        });
    }
}

fn validate_volume_mounts(spec: &Value, c: &Value, path: &str, causes: &mut Vec<Cause>) {
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for (j, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{path}.volumeMounts[{j}]");
        let name = m["name"].as_str().unwrap_or("");
        if name.is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: format!("{at}.name"),
            });
        } else if !volumes.contains(&name) {
            causes.push(Cause {
                reason: "FieldValueNotFound",
                message: format!("Not found: {name:?}"),
                field: format!("{at}.name"),
            });
        }
        if m["mountPath"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: format!("{at}.mountPath"),
            });
        }
        let sub_path = m["subPath"].as_str().unwrap_or("");
        if !sub_path.is_empty() {
            validate_local_descending_path(sub_path, format!("{at}.subPath"), causes);
        }
        if let Some(expr) = m["subPathExpr"].as_str().filter(|e| !e.is_empty()) {
            if !sub_path.is_empty() {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {expr:?}: subPathExpr and subPath are mutually exclusive"
                    ),
                    field: format!("{at}.subPathExpr"),
                });
            }
            validate_local_descending_path(expr, format!("{at}.subPathExpr"), causes);
        }
    }
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: format!("{path}.containers"),
        });
    }
    for (i, c) in containers.into_iter().flatten().enumerate() {
        if c["name"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: format!("{path}.containers[{i}].name"),
            });
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value".into(),
                field: format!("{path}.containers[{i}].image"),
            });
        }
        validate_volume_mounts(spec, c, &format!("{path}.containers[{i}]"), causes);
    }
    for (i, c) in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_volume_mounts(spec, c, &format!("{path}.initContainers[{i}]"), causes);
    }
}

/// The Job spec rules the apiserver checks before defaulting (completion mode and its limits).
fn validate_job_spec(spec: &Value, causes: &mut Vec<Cause>) {
    let mode = spec["completionMode"].as_str().unwrap_or("NonIndexed");
    if !matches!(mode, "NonIndexed" | "Indexed") {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {mode:?}: supported values: \"NonIndexed\", \"Indexed\""
            ),
            field: "spec.completionMode".into(),
        });
    }
    let indexed = mode == "Indexed";
    if indexed && spec["completions"].is_null() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value: when completion mode is Indexed".into(),
            field: "spec.completions".into(),
        });
    }
    for (field, needs) in [
        ("backoffLimitPerIndex", "requires indexed completion mode"),
        ("maxFailedIndexes", "requires indexed completion mode"),
    ] {
        if !indexed && !spec[field].is_null() {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {}: {needs}", spec[field]),
                field: format!("spec.{field}"),
            });
        }
    }
    if !spec["maxFailedIndexes"].is_null() && spec["backoffLimitPerIndex"].is_null() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value: when maxFailedIndexes is specified".into(),
            field: "spec.backoffLimitPerIndex".into(),
        });
    }
    for (i, rule) in spec["podFailurePolicy"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let action = rule["action"].as_str().unwrap_or("");
        if !matches!(action, "FailJob" | "FailIndex" | "Ignore" | "Count") {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {action:?}: supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\""
                ),
                field: format!("spec.podFailurePolicy.rules[{i}].action"),
            });
        }
        if action == "FailIndex" && spec["backoffLimitPerIndex"].is_null() {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                message:
                    "Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set"
                        .into(),
                field: format!("spec.podFailurePolicy.rules[{i}].action"),
            });
        }
    }
}

/// Create-time defaults and validation for a built-in kind. `uid` is already assigned.
pub fn admit_create(plural: &str, obj: &mut Value) -> Result<(), ApiError> {
    let mut causes = vec![];
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    match plural {
        "namespaces" => {
            set_default(obj, "spec", json!({}));
            set_default(&mut obj["spec"], "finalizers", json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        "pods" => {
            set_default(obj, "spec", json!({}));
            default_pod_spec(&mut obj["spec"]);
            validate_pod_spec(&obj["spec"], "spec", &mut causes);
            let qos = qos_class(&obj["spec"]);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        "services" => {
            set_default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            set_default(spec, "ipFamilies", json!(["IPv4"]));
            set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            for p in spec["ports"].as_array_mut().into_iter().flatten() {
                set_default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                set_default(p, "targetPort", port);
            }
            set_default(obj, "status", json!({"loadBalancer": {}}));
        }
        "secrets" => {
            set_default(obj, "type", json!("Opaque"));
            fold_string_data(obj);
        }
        "persistentvolumeclaims" => {
            set_default(obj, "spec", json!({}));
            set_default(&mut obj["spec"], "volumeMode", json!("Filesystem"));
            obj["status"] = json!({"phase": "Pending"});
        }
        "jobs" => {
            set_default(obj, "spec", json!({}));
            validate_job_spec(&obj["spec"], &mut causes);
            let spec = &mut obj["spec"];
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completions", json!(1));
            // With per-index limits the Job-wide limit is off unless set (the apiserver's default).
            let backoff = if spec["backoffLimitPerIndex"].is_null() {
                6
            } else {
                i32::MAX as i64
            };
            set_default(spec, "backoffLimit", json!(backoff));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            if spec["manualSelector"].as_bool() != Some(true) {
                spec["selector"] =
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                let labels = &mut spec["template"]["metadata"]["labels"];
                for (k, v) in [
                    ("controller-uid", uid.as_str()),
                    ("batch.kubernetes.io/controller-uid", uid.as_str()),
                    ("job-name", name.as_str()),
                    ("batch.kubernetes.io/job-name", name.as_str()),
                ] {
                    labels[k] = json!(v);
                }
            }
            default_pod_spec(&mut spec["template"]["spec"]);
            validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            let rp = spec["template"]["spec"]["restartPolicy"]
                .as_str()
                .unwrap_or("");
            if !spec["podFailurePolicy"].is_null() && rp != "Never" {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {rp:?}: only \"Never\" is supported when podFailurePolicy is specified"
                    ),
                    field: "spec.template.spec.restartPolicy".into(),
                });
            } else if rp != "OnFailure" && rp != "Never" {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    message: format!(
                        "Unsupported value: {rp:?}: supported values: \"OnFailure\", \"Never\""
                    ),
                    field: "spec.template.spec.restartPolicy".into(),
                });
            }
            set_default(obj, "status", json!({}));
        }
        "deployments" | "replicasets" => {
            set_default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            if plural == "deployments" {
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
            }
            default_pod_spec(&mut spec["template"]["spec"]);
            validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            validate_selector(spec, &mut causes);
            set_default(obj, "status", json!({}));
        }
        "customresourcedefinitions" => {
            obj["status"] = json!({"conditions": [], "acceptedNames": {}, "storedVersions": []});
        }
        "nodes" => {}
        _ => {}
    }
    finish(plural, obj, causes)
}

/// Update-time defaults and validation (the same strategies; immutable fields checked).
pub fn admit_update(plural: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
    let mut causes = vec![];
    match plural {
        "pods" => {
            default_pod_spec(&mut obj["spec"]);
        }
        "secrets" => fold_string_data(obj),
        "jobs" => {
            default_pod_spec(&mut obj["spec"]["template"]["spec"]);
            if obj["spec"]["selector"] != old["spec"]["selector"]
                && !old["spec"]["selector"].is_null()
            {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {}: field is immutable",
                        obj["spec"]["selector"]
                    ),
                    field: "spec.selector".into(),
                });
            }
            // The pod template may only change while the Job is suspended.
            let suspended = old["spec"]["suspend"].as_bool() == Some(true);
            if !suspended && obj["spec"]["template"] != old["spec"]["template"] {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {}: field is immutable",
                        obj["spec"]["template"]
                    ),
                    field: "spec.template".into(),
                });
            }
            if obj["spec"]["completions"] != old["spec"]["completions"] {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {}: field is immutable",
                        obj["spec"]["completions"]
                    ),
                    field: "spec.completions".into(),
                });
            }
        }
        "deployments" | "replicasets" => {
            default_pod_spec(&mut obj["spec"]["template"]["spec"]);
            validate_selector(&obj["spec"], &mut causes);
            if plural == "deployments" && obj["spec"]["selector"] != old["spec"]["selector"] {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {}: field is immutable",
                        obj["spec"]["selector"]
                    ),
                    field: "spec.selector".into(),
                });
            }
        }
        "services" => {
            if obj["spec"]["clusterIP"].is_null() {
                obj["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
                obj["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
            }
            for p in obj["spec"]["ports"].as_array_mut().into_iter().flatten() {
                set_default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                set_default(p, "targetPort", port);
            }
        }
        _ => {}
    }
    finish(plural, obj, causes)
}

fn finish(plural: &str, obj: &Value, causes: Vec<Cause>) -> Result<(), ApiError> {
    if causes.is_empty() {
        return Ok(());
    }
    let (group, kind) = kind_of(plural);
    Err(ApiError::invalid(
        group,
        kind,
        obj["metadata"]["name"].as_str().unwrap_or(""),
        causes,
    ))
}

fn kind_of(plural: &str) -> (&'static str, &'static str) {
    match plural {
        "pods" => ("", "Pod"),
        "jobs" => ("batch", "Job"),
        "deployments" => ("apps", "Deployment"),
        "replicasets" => ("apps", "ReplicaSet"),
        "services" => ("", "Service"),
        _ => ("", "Object"),
    }
}

fn validate_selector(spec: &Value, causes: &mut Vec<Cause>) {
    if !spec["selector"].is_object() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: "spec.selector".into(),
        });
        return;
    }
    let sel = crate::selectors::LabelSelector::from_object(&spec["selector"]);
    let labels = &spec["template"]["metadata"]["labels"];
    if sel.is_empty() || !sel.matches(labels) {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {labels}: `selector` does not match template `labels`"
            ),
            field: "spec.template.metadata.labels".into(),
        });
    }
}

fn fold_string_data(obj: &mut Value) {
    if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
        && let Some(sd) = sd.as_object()
    {
        for (k, v) in sd {
            let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or(""));
            obj["data"][k] = json!(enc);
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let any = cs.iter().any(|c| {
        c["resources"]["requests"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
            || c["resources"]["limits"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        let l = &c["resources"]["limits"];
        let r = &c["resources"]["requests"];
        l["cpu"].is_string()
            && l["memory"].is_string()
            && (r["cpu"].is_null() || r["cpu"] == l["cpu"])
            && (r["memory"].is_null() || r["memory"] == l["memory"])
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
