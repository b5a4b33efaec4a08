//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902) through the `json-patch` crate, and
//! strategic merge patch for built-in kinds.

use serde_json::{Map, Value};

use crate::status::{ApiError, ApiResult};

/// JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    ::json_patch::merge(target, patch);
}

/// JSON patch (RFC 6902), all operations or none.
pub fn json_patch(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops: ::json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "json patch must be an array of operations (op, path, value/from): {e}"
        ))
    })?;
    // As the apiserver's JSON patch (evanphx/json-patch): a `test` for null passes on a path
    // that does not exist. Clients rely on it to add a first finalizer (kube-rs' finalizer
    // helper tests `/metadata/finalizers` for null, then adds the list).
    let mut work = doc.clone();
    for op in &ops.0 {
        if let ::json_patch::PatchOperation::Test(t) = op
            && t.value.is_null()
            && work.pointer(t.path.as_str()).is_none_or(Value::is_null)
        {
            continue;
        }
        ::json_patch::patch(&mut work, std::slice::from_ref(op))
            .map_err(|e| ApiError::new(422, "Invalid", format!("jsonpatch: {e}")))?;
    }
    *doc = work;
    Ok(())
}

/// The merge key of a list field in the built-in types, by field name (the few lists the
/// simulator's users patch; everything else is replaced atomically, as a `+listType=atomic`).
pub fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses" => Some("name"),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "ports" => match sample {
            Some(s) if s.get("containerPort").is_some() => Some("containerPort"),
            _ => Some("port"),
        },
        _ => None,
    }
}

/// Lists of scalars merged as sets.
fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

pub fn strategic_merge(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) else {
        *target = patch.clone();
        return Ok(());
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut np = p.clone();
        np.remove("$patch");
        *t = np;
        return Ok(());
    }
    if let Some(keys) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (t.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Object(_) => {
                let e = t.entry(k.clone()).or_insert(Value::Object(Map::new()));
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    strategic_merge(e, v)?;
                }
            }
            Value::Array(items) => {
                let cur = t
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let merged = if is_set_list(k) {
                    let mut out = cur;
                    for i in items {
                        if !out.contains(i) {
                            out.push(i.clone());
                        }
                    }
                    out
                } else if let Some(mk) = merge_key(k, items.first().or(cur.first())) {
                    merge_list(cur, items, mk)?
                } else {
                    items.clone()
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(mut cur: Vec<Value>, items: &[Value], key: &str) -> ApiResult<Vec<Value>> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect());
    }
    for item in items {
        let kv = item.get(key).cloned().unwrap_or(Value::Null);
        let pos = cur
            .iter()
            .position(|c| c.get(key) == Some(&kv) && !kv.is_null());
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                cur.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => strategic_merge(&mut cur[p], item)?,
            None => cur.push(item.clone()),
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() -> Result<(), ApiError> {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
        )?;
        assert_eq!(t["spec"]["containers"][1]["image"], "z");
        assert_eq!(t["spec"]["containers"][0]["image"], "x");
        Ok(())
    }

    #[test]
    fn json_patch_ops() -> Result<(), ApiError> {
        let mut t = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut t,
            &json!([{"op": "add", "path": "/a/-", "value": 3}, {"op": "remove", "path": "/b/c"}, {"op": "replace", "path": "/a/0", "value": 9}]),
        )?;
        assert_eq!(t, json!({"a": [9, 2, 3], "b": {}}));
        assert!(json_patch(&mut t, &json!([{"op": "test", "path": "/a/0", "value": 1}])).is_err());
        // kube-rs' first finalizer: a test for null on a missing list, then the add.
        let mut obj = json!({"metadata": {"name": "x"}});
        json_patch(
            &mut obj,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["tailor.dev/cleanup"]}
            ]),
        )?;
        assert_eq!(obj["metadata"]["finalizers"], json!(["tailor.dev/cleanup"]));
        // All or nothing: a failing op leaves the object as it was.
        let before = obj.clone();
        assert!(
            json_patch(
                &mut obj,
                &json!([
                    {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
                    {"op": "test", "path": "/metadata/finalizers", "value": null}
                ])
            )
            .is_err()
        );
        assert_eq!(obj, before);
        Ok(())
    }
}
