//! Server-side apply and `managedFields`: field sets in the `FieldsV1` format, ownership per
//! manager, conflicts (409 unless forced), and removal of fields a manager stops applying.

use serde_json::{Map, Value, json};

use crate::patch::merge_key;
use crate::status::{ApiError, Cause};

/// How lists are keyed: by field name for built-ins, by `x-kubernetes-list-map-keys` for CRDs.
pub struct ListKeys<'a> {
    pub schema: Option<&'a Value>,
}

impl ListKeys<'_> {
    /// Keys of the list at `path` (tokens `f:`/`k:`), None for atomic lists.
    fn keys(&self, path: &[String], sample: Option<&Value>) -> Option<Vec<String>> {
        match self.schema {
            None => {
                let last = path.last()?.strip_prefix("f:")?;
                if last == "finalizers" {
                    return None;
                }
                merge_key(last, sample).map(|k| vec![k.to_string()])
            }
            Some(s) => {
                let mut cur = s;
                for t in path {
                    if let Some(f) = t.strip_prefix("f:") {
                        cur = cur
                            .get("properties")
                            .and_then(|p| p.get(f))
                            .or_else(|| cur.get("additionalProperties"))?;
                    } else {
                        cur = cur.get("items")?;
                    }
                }
                if cur.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
                    let keys = cur.get("x-kubernetes-list-map-keys")?.as_array()?;
                    Some(
                        keys.iter()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect(),
                    )
                } else {
                    None
                }
            }
        }
    }
}

fn item_token(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(format!("k:{}", Value::Object(m)))
}

const META_SKIP: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

/// The field set (FieldsV1) of an object or applied configuration.
pub fn fields_of(v: &Value, lk: &ListKeys<'_>) -> Value {
    let mut set = Map::new();
    if let Some(o) = v.as_object() {
        for (k, child) in o {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                let mut meta = Map::new();
                if let Some(mo) = child.as_object() {
                    for (mk, mv) in mo {
                        if META_SKIP.contains(&mk.as_str()) {
                            continue;
                        }
                        let path = vec!["f:metadata".to_string(), format!("f:{mk}")];
                        meta.insert(format!("f:{mk}"), node_fields(mv, &path, lk));
                    }
                }
                if !meta.is_empty() {
                    set.insert("f:metadata".into(), Value::Object(meta));
                }
                continue;
            }
            let path = vec![format!("f:{k}")];
            set.insert(format!("f:{k}"), node_fields(child, &path, lk));
        }
    }
    Value::Object(set)
}

fn node_fields(v: &Value, path: &[String], lk: &ListKeys<'_>) -> Value {
    match v {
        Value::Object(o) => {
            let mut m = Map::new();
            for (k, c) in o {
                let mut p = path.to_vec();
                p.push(format!("f:{k}"));
                m.insert(format!("f:{k}"), node_fields(c, &p, lk));
            }
            if m.is_empty() {
                Value::Object(Map::new())
            } else {
                m.insert(".".into(), json!({}));
                Value::Object(m)
            }
        }
        Value::Array(items) => {
            let Some(keys) = lk.keys(path, items.first()) else {
                return json!({});
            };
            let mut m = Map::new();
            for item in items {
                let Some(tok) = item_token(item, &keys) else {
                    return json!({});
                };
                let mut p = path.to_vec();
                p.push(tok.clone());
                let mut child = node_fields(item, &p, lk);
                if let Some(c) = child.as_object_mut() {
                    c.insert(".".into(), json!({}));
                }
                m.insert(tok, child);
            }
            Value::Object(m)
        }
        _ => json!({}),
    }
}

/// Leaf paths of a field set.
pub fn leaves(set: &Value) -> Vec<Vec<String>> {
    let mut out = vec![];
    fn walk(s: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let Some(o) = s.as_object() else { return };
        let kids: Vec<_> = o.iter().filter(|(k, _)| *k != ".").collect();
        if kids.is_empty() {
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
            return;
        }
        for (k, c) in kids {
            prefix.push(k.clone());
            walk(c, prefix, out);
            prefix.pop();
        }
    }
    walk(set, &mut vec![], &mut out);
    out
}

fn set_has(set: &Value, path: &[String]) -> bool {
    let mut cur = set;
    for t in path {
        match cur.get(t) {
            Some(c) => cur = c,
            None => return false,
        }
    }
    true
}

fn set_insert(set: &mut Value, path: &[String]) {
    let mut cur = set;
    for t in path {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .map(|m| m.entry(t.clone()).or_insert(json!({})))
            .expect("just made an object");
    }
}

fn set_remove(set: &mut Value, path: &[String]) {
    fn rec(cur: &mut Value, path: &[String]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return true;
        };
        let Some(m) = cur.as_object_mut() else {
            return false;
        };
        let remove_here = match m.get_mut(first) {
            Some(c) => {
                if rest.is_empty() {
                    true
                } else {
                    rec(c, rest);
                    c.as_object().is_some_and(|o| o.keys().all(|k| k == "."))
                }
            }
            None => false,
        };
        if remove_here {
            m.shift_remove(first);
        }
        m.keys().all(|k| k == ".")
    }
    rec(set, path);
}

/// The value at a field path of an object.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for t in path {
        if let Some(f) = t.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = t.strip_prefix("k:") {
            let key: Value = serde_json::from_str(k).ok()?;
            let ko = key.as_object()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|i| ko.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))?;
        } else if let Some(vv) = t.strip_prefix("v:") {
            let want: Value = serde_json::from_str(vv).ok()?;
            cur = cur.as_array()?.iter().find(|i| **i == want)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for t in parent {
        let next = if let Some(f) = t.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = t.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Value>(k) else {
                return;
            };
            let Some(ko) = key.as_object().cloned() else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| ko.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.shift_remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:")
        && let Ok(key) = serde_json::from_str::<Value>(k)
        && let Some(ko) = key.as_object()
        && let Some(a) = cur.as_array_mut()
    {
        a.retain(|i| !ko.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
}

/// Merge an applied configuration into the live object (maps merge, keyed lists merge by key,
/// everything else is replaced).
pub fn merge_applied(live: &mut Value, config: &Value, path: &mut Vec<String>, lk: &ListKeys<'_>) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                path.push(format!("f:{k}"));
                match l.get_mut(k) {
                    Some(lv) => merge_applied(lv, cv, path, lk),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(l), Value::Array(c)) => match lk.keys(path, c.first().or(l.first())) {
            Some(keys) => {
                for item in c {
                    let pos = l
                        .iter()
                        .position(|li| keys.iter().all(|k| li.get(k) == item.get(k)));
                    match pos {
                        Some(p) => {
                            if let Some(tok) = item_token(item, &keys) {
                                path.push(tok);
                                merge_applied(&mut l[p], item, path, lk);
                                path.pop();
                            }
                        }
                        None => l.push(item.clone()),
                    }
                }
            }
            None => *l = c.clone(),
        },
        (l, c) => *l = c.clone(),
    }
}

/// Remove from `obj` every node in `old` that is in neither `new` nor any other manager's set.
fn prune_released(
    obj: &mut Value,
    old: &Value,
    new: &Value,
    others: &[&Value],
    prefix: &mut Vec<String>,
) {
    let Some(o) = old.as_object() else { return };
    for (k, child) in o {
        if k == "." {
            continue;
        }
        prefix.push(k.clone());
        let in_new = set_has(new, prefix);
        let in_others = others.iter().any(|s| set_has(s, prefix));
        if !in_new && !in_others {
            remove_at(obj, prefix);
        } else {
            prune_released(obj, child, new, others, prefix);
        }
        prefix.pop();
    }
}

fn path_str(p: &[String]) -> String {
    let mut s = String::new();
    for t in p {
        if let Some(f) = t.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = t.strip_prefix("k:") {
            s.push('[');
            s.push_str(&k.replace(['{', '}'], "").replace("\":", "\"="));
            s.push(']');
        }
    }
    s
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn entries(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn same_entry(e: &Value, manager: &str, op: &str, sub: &str) -> bool {
    e["manager"].as_str() == Some(manager)
        && e["operation"].as_str() == Some(op)
        && e["subresource"].as_str().unwrap_or("") == sub
}

fn entry(manager: &str, op: &str, api_version: &str, sub: &str, set: Value) -> Value {
    let mut e = json!({
        "manager": manager, "operation": op, "apiVersion": api_version, "time": now(),
        "fieldsType": "FieldsV1", "fieldsV1": set,
    });
    if !sub.is_empty() {
        e["subresource"] = json!(sub);
    }
    e
}

pub struct ApplyCtx<'a> {
    pub group: &'a str,
    pub plural: &'a str,
    pub name: &'a str,
    pub api_version: String,
    pub manager: &'a str,
    pub force: bool,
    pub subresource: &'a str,
    pub list_keys: ListKeys<'a>,
}

/// Server-side apply of `config` onto `live` (None on create); returns the new object with
/// `managedFields` updated. Conflicts are a 409 naming each field and its owner.
pub fn apply(live: Option<&Value>, config: &Value, ctx: &ApplyCtx<'_>) -> Result<Value, ApiError> {
    let new_set = fields_of(config, &ctx.list_keys);
    let mut obj = live.cloned().unwrap_or_else(|| json!({}));
    let mut mf = entries(&obj);
    // Conflicts: a field this manager applies that another manager owns with a different value.
    let mut conflicts: Vec<(String, String)> = vec![];
    let mine_leaves = leaves(&new_set);
    for e in &mf {
        if same_entry(e, ctx.manager, "Apply", ctx.subresource) {
            continue;
        }
        if e["subresource"].as_str().unwrap_or("") != ctx.subresource {
            continue;
        }
        let owner = e["manager"].as_str().unwrap_or("").to_string();
        for p in &mine_leaves {
            if set_has(&e["fieldsV1"], p) && value_at(&obj, p) != value_at(config, p) {
                conflicts.push((owner.clone(), path_str(p)));
            }
        }
    }
    if !conflicts.is_empty() && !ctx.force {
        let n = conflicts.len();
        let msg = if n == 1 {
            format!(
                "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
                conflicts[0].0, ctx.api_version, conflicts[0].1
            )
        } else {
            let mut m = format!("Apply failed with {n} conflicts: ");
            let mut owners: Vec<&String> = conflicts.iter().map(|c| &c.0).collect();
            owners.dedup();
            for o in owners {
                m.push_str(&format!(
                    "conflicts with \"{o}\" using {}:\n",
                    ctx.api_version
                ));
                for (co, f) in &conflicts {
                    if co == o {
                        m.push_str(&format!("- {f}\n"));
                    }
                }
            }
            m
        };
        let mut err = ApiError::conflict(ctx.group, ctx.plural, ctx.name, msg);
        if let Some(d) = err.details.as_mut() {
            d["causes"] = Value::Array(
                conflicts
                    .iter()
                    .map(|(o, f)| {
                        let c = Cause {
                            reason: "FieldManagerConflict",
                            message: format!("conflict with \"{o}\" using {}", ctx.api_version),
                            field: f.clone(),
                        };
                        json!({"reason": c.reason, "message": c.message, "field": c.field})
                    })
                    .collect(),
            );
        }
        return Err(err);
    }
    // Forced: the applier takes the contested fields from their previous owners.
    for e in mf.iter_mut() {
        if same_entry(e, ctx.manager, "Apply", ctx.subresource) {
            continue;
        }
        for p in &mine_leaves {
            if set_has(&e["fieldsV1"], p) && value_at(&obj, p) != value_at(config, p) {
                set_remove(&mut e["fieldsV1"], p);
            }
        }
    }
    let old_set = mf
        .iter()
        .find(|e| same_entry(e, ctx.manager, "Apply", ctx.subresource))
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or_else(|| json!({}));
    let mut cfg = config.clone();
    if let Some(m) = cfg.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    merge_applied(&mut obj, &cfg, &mut vec![], &ctx.list_keys);
    let others: Vec<Value> = mf
        .iter()
        .filter(|e| !same_entry(e, ctx.manager, "Apply", ctx.subresource))
        .map(|e| e["fieldsV1"].clone())
        .collect();
    let other_refs: Vec<&Value> = others.iter().collect();
    prune_released(&mut obj, &old_set, &new_set, &other_refs, &mut vec![]);
    mf.retain(|e| !same_entry(e, ctx.manager, "Apply", ctx.subresource));
    mf.retain(|e| e["fieldsV1"].as_object().is_some_and(|o| !o.is_empty()));
    mf.push(entry(
        ctx.manager,
        "Apply",
        &ctx.api_version,
        ctx.subresource,
        new_set,
    ));
    obj["metadata"]["managedFields"] = Value::Array(mf);
    Ok(obj)
}

/// Record a non-apply write: the writer owns every field it changed; removed fields leave every
/// set.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    sub: &str,
    lk: &ListKeys<'_>,
) {
    let mut mf = old.map(entries).unwrap_or_default();
    let new_fields = fields_of(new, lk);
    let mut changed = vec![];
    for p in leaves(&new_fields) {
        let before = old.and_then(|o| value_at(o, &p));
        if before != value_at(new, &p) {
            changed.push(p);
        }
    }
    for e in mf.iter_mut() {
        let mut set = e["fieldsV1"].take();
        for p in leaves(&set) {
            if value_at(new, &p).is_none() || changed.contains(&p) {
                set_remove(&mut set, &p);
            }
        }
        e["fieldsV1"] = set;
    }
    if !changed.is_empty() {
        match mf
            .iter_mut()
            .find(|e| same_entry(e, manager, "Update", sub))
        {
            Some(e) => {
                for p in &changed {
                    set_insert(&mut e["fieldsV1"], p);
                }
                e["time"] = json!(now());
                e["apiVersion"] = json!(api_version);
            }
            None => {
                let mut set = json!({});
                for p in &changed {
                    set_insert(&mut set, p);
                }
                mf.push(entry(manager, "Update", api_version, sub, set));
            }
        }
    }
    mf.retain(|e| e["fieldsV1"].as_object().is_some_and(|o| !o.is_empty()));
    new["metadata"]["managedFields"] = Value::Array(mf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(manager: &'a str, force: bool) -> ApplyCtx<'a> {
        ApplyCtx {
            group: "",
            plural: "configmaps",
            name: "c",
            api_version: "v1".into(),
            manager,
            force,
            subresource: "",
            list_keys: ListKeys { schema: None },
        }
    }

    #[test]
    fn apply_conflicts_and_releases() -> Result<(), ApiError> {
        let a = apply(
            None,
            &json!({"metadata": {"name": "c"}, "data": {"x": "1", "y": "2"}}),
            &ctx("a", false),
        )?;
        // Another manager changing x conflicts.
        let err = apply(
            Some(&a),
            &json!({"metadata": {"name": "c"}, "data": {"x": "9"}}),
            &ctx("b", false),
        );
        assert_eq!(err.err().map(|e| e.code), Some(409));
        // Same value is shared ownership, not a conflict.
        let b = apply(
            Some(&a),
            &json!({"metadata": {"name": "c"}, "data": {"x": "1"}}),
            &ctx("b", false),
        )?;
        // a stops applying x and y: y goes away, x stays (b still owns it).
        let c = apply(
            Some(&b),
            &json!({"metadata": {"name": "c"}}),
            &ctx("a", false),
        )?;
        assert_eq!(c["data"], json!({"x": "1"}));
        let forced = apply(
            Some(&c),
            &json!({"metadata": {"name": "c"}, "data": {"x": "5"}}),
            &ctx("a", true),
        )?;
        assert_eq!(forced["data"]["x"], "5");
        Ok(())
    }
}
