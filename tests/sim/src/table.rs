//! Server-side printing (`meta.k8s.io/v1` Table) for `kubectl get`: the built-in kinds' usual
//! columns and the CRDs' `additionalPrinterColumns` (JSONPath).
//!
//! Size (over 700 lines, on purpose): one column table per built-in kind, as `kubectl get`
//! prints it; each is a few lines of data, and they share the row and cell helpers.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// kubectl's human-readable durations ("45s", "3m20s", "5h", "2d3h").
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 730 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

pub fn age(ts: &Value) -> String {
    match ts
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => {
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        }
        None => "<unknown>".into(),
    }
}

/// A small JSONPath: `.a.b`, `[0]`, `[*]`, `[?(@.type=="Ready")]`, with `{}` braces allowed.
pub fn jsonpath(obj: &Value, path: &str) -> Vec<Value> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur = vec![obj.clone()];
    let mut rest = p.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            cur = cur.iter().filter_map(|v| v.get(key).cloned()).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .collect();
            } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = match f.split_once("==") {
                    Some((a, b)) => (
                        a.trim(),
                        Some(b.trim().trim_matches(['"', '\'']).to_string()),
                    ),
                    None => (f.trim(), None),
                };
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter(|item| {
                        let got = jsonpath(item, &format!(".{field}"));
                        match &want {
                            Some(w) => got.iter().any(|g| {
                                g.as_str()
                                    .map(String::from)
                                    .unwrap_or_else(|| g.to_string())
                                    == *w
                            }),
                            None => !got.is_empty(),
                        }
                    })
                    .collect();
            } else if let Ok(i) = inner.parse::<i64>() {
                cur = cur
                    .iter()
                    .filter_map(|v| {
                        let a = v.as_array()?;
                        let idx = if i < 0 { a.len() as i64 + i } else { i };
                        a.get(usize::try_from(idx).ok()?).cloned()
                    })
                    .collect();
            } else {
                let key = inner.trim_matches(['\'', '"']);
                cur = cur.iter().filter_map(|v| v.get(key).cloned()).collect();
            }
        } else {
            break;
        }
    }
    cur
}

fn col(name: &str, ty: &str, fmt: &str, desc: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": fmt, "description": desc, "priority": priority})
}

fn name_col() -> Value {
    col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )
}

fn age_col() -> Value {
    col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

fn pod_status(p: &Value) -> (String, i64, String) {
    let cs: Vec<Value> = p["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = p["spec"]["containers"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    let ready = cs
        .iter()
        .filter(|c| c["ready"].as_bool() == Some(true))
        .count();
    let restarts: i64 = cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum();
    let mut reason = p["status"]["reason"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| s(&p["status"]["phase"]));
    for c in &cs {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            reason = r.to_string();
        } else if let Some(r) = c["state"]["terminated"]["reason"].as_str()
            && reason != "Completed"
        {
            reason = r.to_string();
        }
    }
    if !p["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    (reason, restarts, format!("{ready}/{total}"))
}

fn builtin_columns(rt: &ResourceType, o: &Value) -> (Vec<Value>, Vec<Value>) {
    let a = age(&o["metadata"]["creationTimestamp"]);
    let n = json!(o["metadata"]["name"]);
    match rt.plural.as_str() {
        "pods" => {
            let (status, restarts, ready) = pod_status(o);
            (
                vec![
                    name_col(),
                    col(
                        "Ready",
                        "string",
                        "",
                        "The aggregate readiness state of this pod for accepting traffic.",
                        0,
                    ),
                    col(
                        "Status",
                        "string",
                        "",
                        "The aggregate status of the containers in this pod.",
                        0,
                    ),
                    col(
                        "Restarts",
                        "string",
                        "",
                        "The number of times the containers in this pod have been restarted.",
                        0,
                    ),
                    age_col(),
                    col("IP", "string", "", "IP address allocated to the pod.", 1),
                    col(
                        "Node",
                        "string",
                        "",
                        "Name of the node the pod is assigned to.",
                        1,
                    ),
                ],
                vec![
                    n,
                    json!(ready),
                    json!(status),
                    json!(restarts.to_string()),
                    json!(a),
                    json!(s(&o["status"]["podIP"])),
                    json!(s(&o["spec"]["nodeName"])),
                ],
            )
        }
        "jobs" => {
            let status = if o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Complete" && c["status"] == "True")
            {
                "Complete"
            } else if o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Failed" && c["status"] == "True")
            {
                "Failed"
            } else if o["spec"]["suspend"].as_bool() == Some(true) {
                "Suspended"
            } else {
                "Running"
            };
            let comp = format!(
                "{}/{}",
                o["status"]["succeeded"].as_i64().unwrap_or(0),
                o["spec"]["completions"].as_i64().unwrap_or(1)
            );
            (
                vec![
                    name_col(),
                    col("Status", "string", "", "Status of the job.", 0),
                    col(
                        "Completions",
                        "string",
                        "",
                        "The completion status of the job.",
                        0,
                    ),
                    col(
                        "Duration",
                        "string",
                        "",
                        "Time required to complete the job.",
                        0,
                    ),
                    age_col(),
                ],
                vec![
                    n,
                    json!(status),
                    json!(comp),
                    json!(job_duration(o)),
                    json!(a),
                ],
            )
        }
        "deployments" => (
            vec![
                name_col(),
                col(
                    "Ready",
                    "string",
                    "",
                    "Number of the pod with ready state",
                    0,
                ),
                col(
                    "Up-to-date",
                    "string",
                    "",
                    "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                    0,
                ),
                col(
                    "Available",
                    "string",
                    "",
                    "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                    0,
                ),
                age_col(),
            ],
            vec![
                n,
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                )),
                json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
                json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0)),
                json!(a),
            ],
        ),
        "replicasets" => (
            vec![
                name_col(),
                col("Desired", "integer", "", "Number of desired pods.", 0),
                col(
                    "Current",
                    "integer",
                    "",
                    "Number of actually running pods.",
                    0,
                ),
                col("Ready", "integer", "", "Number of ready pods.", 0),
                age_col(),
            ],
            vec![
                n,
                json!(o["spec"]["replicas"].as_i64().unwrap_or(0)),
                json!(o["status"]["replicas"].as_i64().unwrap_or(0)),
                json!(o["status"]["readyReplicas"].as_i64().unwrap_or(0)),
                json!(a),
            ],
        ),
        "services" => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", s(&p["port"]), s(&p["protocol"])))
                .collect();
            (
                vec![
                    name_col(),
                    col("Type", "string", "", "The type of service.", 0),
                    col(
                        "Cluster-IP",
                        "string",
                        "",
                        "The cluster IP of the service.",
                        0,
                    ),
                    col("External-IP", "string", "", "External IPs.", 0),
                    col("Port(s)", "string", "", "The ports of the service.", 0),
                    age_col(),
                ],
                vec![
                    n,
                    json!(s(&o["spec"]["type"])),
                    json!(s(&o["spec"]["clusterIP"])),
                    json!("<none>"),
                    json!(if ports.is_empty() {
                        "<none>".to_string()
                    } else {
                        ports.join(",")
                    }),
                    json!(a),
                ],
            )
        }
        "nodes" => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                vec![
                    name_col(),
                    col("Status", "string", "", "The status of the node", 0),
                    col("Roles", "string", "", "The roles of the node", 0),
                    age_col(),
                    col("Version", "string", "", "Kubelet Version", 0),
                ],
                vec![
                    n,
                    json!(if ready { "Ready" } else { "NotReady" }),
                    json!("<none>"),
                    json!(a),
                    json!(s(&o["status"]["nodeInfo"]["kubeletVersion"])),
                ],
            )
        }
        "namespaces" => (
            vec![
                name_col(),
                col("Status", "string", "", "The status of the namespace", 0),
                age_col(),
            ],
            vec![n, json!(s(&o["status"]["phase"])), json!(a)],
        ),
        "configmaps" => (
            vec![
                name_col(),
                col("Data", "string", "", "Number of data entries.", 0),
                age_col(),
            ],
            vec![
                n,
                json!(
                    o["data"].as_object().map(|m| m.len()).unwrap_or(0)
                        + o["binaryData"].as_object().map(|m| m.len()).unwrap_or(0)
                ),
                json!(a),
            ],
        ),
        "secrets" => (
            vec![
                name_col(),
                col("Type", "string", "", "The type of the secret", 0),
                col(
                    "Data",
                    "string",
                    "",
                    "The number of entries in the secret",
                    0,
                ),
                age_col(),
            ],
            vec![
                n,
                json!(s(&o["type"])),
                json!(o["data"].as_object().map(|m| m.len()).unwrap_or(0)),
                json!(a),
            ],
        ),
        "persistentvolumeclaims" => (
            vec![
                name_col(),
                col("Status", "string", "", "The status of the claim", 0),
                col("Volume", "string", "", "The volume bound", 0),
                age_col(),
            ],
            vec![
                n,
                json!(s(&o["status"]["phase"])),
                json!(s(&o["spec"]["volumeName"])),
                json!(a),
            ],
        ),
        "events" => (
            vec![
                col("Last Seen", "string", "", "Time of last occurrence", 0),
                col("Type", "string", "", "Type of event", 0),
                col("Reason", "string", "", "Reason", 0),
                col("Object", "string", "", "Object", 0),
                col("Message", "string", "", "Message", 0),
                // As the apiserver's events table: the name only with `-o wide`.
                col(
                    "Name",
                    "string",
                    "name",
                    "Name must be unique within a namespace.",
                    1,
                ),
            ],
            vec![
                json!(
                    age(&o["lastTimestamp"])
                        .replace("<unknown>", &age(&o["metadata"]["creationTimestamp"]))
                ),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    o["involvedObject"]["kind"]
                        .as_str()
                        .or(o["regarding"]["kind"].as_str())
                        .unwrap_or("")
                        .to_lowercase(),
                    o["involvedObject"]["name"]
                        .as_str()
                        .or(o["regarding"]["name"].as_str())
                        .unwrap_or("")
                )),
                json!(o["message"].as_str().or(o["note"].as_str()).unwrap_or("")),
                n,
            ],
        ),
        "poddisruptionbudgets" => {
            let or_na = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            (
                vec![
                    name_col(),
                    col(
                        "Min Available",
                        "string",
                        "",
                        "The minimum number of pods that must be available",
                        0,
                    ),
                    col(
                        "Max Unavailable",
                        "string",
                        "",
                        "The maximum number of pods that may be unavailable",
                        0,
                    ),
                    col(
                        "Allowed Disruptions",
                        "integer",
                        "",
                        "Calculated number of pods that may be disrupted at this time",
                        0,
                    ),
                    age_col(),
                ],
                vec![
                    n,
                    json!(or_na(&o["spec"]["minAvailable"])),
                    json!(or_na(&o["spec"]["maxUnavailable"])),
                    json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
                    json!(a),
                ],
            )
        }
        "networkpolicies" => (
            vec![
                name_col(),
                col(
                    "Pod-Selector",
                    "string",
                    "",
                    "Label selector of the pods the policy applies to",
                    0,
                ),
                age_col(),
            ],
            vec![n, json!(selector_text(&o["spec"]["podSelector"])), json!(a)],
        ),
        "horizontalpodautoscalers" => {
            let target = &o["spec"]["scaleTargetRef"];
            let targets: Vec<String> = o["spec"]["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let t = &m["resource"]["target"];
                    let want = t["averageUtilization"]
                        .as_i64()
                        .map(|u| format!("{u}%"))
                        .or_else(|| t["averageValue"].as_str().map(String::from))
                        .or_else(|| t["value"].as_str().map(String::from))
                        .unwrap_or_else(|| "<unknown>".into());
                    format!("<unknown>/{want}")
                })
                .collect();
            (
                vec![
                    name_col(),
                    col("Reference", "string", "", "The scale target", 0),
                    col("Targets", "string", "", "Current and target metrics", 0),
                    col("MinPods", "string", "", "Lower limit of replicas", 0),
                    col("MaxPods", "string", "", "Upper limit of replicas", 0),
                    col("Replicas", "string", "", "Current replicas", 0),
                    age_col(),
                ],
                vec![
                    n,
                    json!(format!("{}/{}", s(&target["kind"]), s(&target["name"]))),
                    json!(if targets.is_empty() {
                        "<none>".to_string()
                    } else {
                        targets.join(", ")
                    }),
                    json!(o["spec"]["minReplicas"].as_i64().unwrap_or(1)),
                    json!(o["spec"]["maxReplicas"].as_i64().unwrap_or(0)),
                    json!(o["status"]["currentReplicas"].as_i64().unwrap_or(0)),
                    json!(a),
                ],
            )
        }
        "customresourcedefinitions" => (
            vec![
                name_col(),
                col("Created At", "date", "", "Creation time", 0),
            ],
            vec![n, json!(s(&o["metadata"]["creationTimestamp"]))],
        ),
        _ => (vec![name_col(), age_col()], vec![n, json!(a)]),
    }
}

/// A label selector as kubectl prints it (`app=x,tier=y`, `<none>` when empty).
fn selector_text(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let vals: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(format!(
            "{} {} ({})",
            e["key"].as_str().unwrap_or(""),
            e["operator"].as_str().unwrap_or("").to_lowercase(),
            vals.join(",")
        ));
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn job_duration(o: &Value) -> String {
    let start = o["status"]["startTime"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    let end = o["status"]["completionTime"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    match start {
        Some(s) => human_duration((end - s.with_timezone(&chrono::Utc)).num_seconds()),
        None => String::new(),
    }
}

fn crd_columns(rt: &ResourceType, o: &Value) -> (Vec<Value>, Vec<Value>) {
    let Some(crd) = &rt.crd else {
        return builtin_columns(rt, o);
    };
    let mut cols = vec![name_col()];
    let mut cells = vec![json!(o["metadata"]["name"])];
    let mut has_age = false;
    for pc in &crd.printer_columns {
        let ty = pc["type"].as_str().unwrap_or("string");
        let path = pc["jsonPath"].as_str().unwrap_or("");
        if path == ".metadata.creationTimestamp" {
            has_age = true;
        }
        cols.push(json!({"name": pc["name"], "type": ty, "format": pc["format"].as_str().unwrap_or(""), "description": pc["description"].as_str().unwrap_or(""), "priority": pc["priority"].as_i64().unwrap_or(0)}));
        let v = jsonpath(o, path).into_iter().next();
        cells.push(match (ty, v) {
            (_, None) => Value::Null,
            ("date", Some(v)) => json!(age(&v)),
            ("integer" | "number" | "boolean", Some(v)) => v,
            (_, Some(Value::String(s))) => json!(s),
            (_, Some(v)) => json!(v.to_string()),
        });
    }
    if crd.printer_columns.is_empty() && !has_age {
        cols.push(age_col());
        cells.push(json!(age(&o["metadata"]["creationTimestamp"])));
    }
    (cols, cells)
}

pub fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

pub fn table(rt: &ResourceType, items: &[&Value], rv: &str, include_object: &str) -> Value {
    let mut columns = if rt.crd.is_some() {
        crd_columns(rt, &json!({})).0
    } else {
        builtin_columns(rt, &json!({"metadata": {}})).0
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let (cols, cells) = crd_columns(rt, o);
            columns = cols;
            let obj = match include_object {
                "None" => Value::Null,
                "Object" => (*o).clone(),
                _ => partial(o),
            };
            json!({"cells": cells, "object": obj})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests;
