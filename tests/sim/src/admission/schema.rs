//! Structural-schema validation with the apiserver's messages (`spec.x: Invalid value: 0:
//! spec.x in body should be greater than or equal to 1`), pruning of unknown fields.

use serde_json::Value;

use crate::status::Cause;

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

/// Go's `%#v`-like rendering the apiserver uses for "Invalid value: ...".
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The schema type at a dotted path (for CEL messages, which name the type, not the value).
pub fn type_at(schema: &Value, path: &str) -> String {
    let mut cur = schema;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexed) = match seg.find('[') {
            Some(i) => (&seg[..i], true),
            None => (seg, false),
        };
        if !name.is_empty() {
            cur = match cur.get("properties").and_then(|p| p.get(name)) {
                Some(s) => s,
                None => return "object".into(),
            };
        }
        if indexed {
            cur = match cur.get("items") {
                Some(s) => s,
                None => return "object".into(),
            };
        }
    }
    cur.get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_string()
}

/// Drop fields the schema does not declare (unless it preserves unknown fields).
pub fn prune(v: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>, root: bool) {
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
        && schema.get("properties").is_none()
    {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let addl = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if root && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&k)).or(addl);
                match sub {
                    Some(s) => {
                        if let Some(child) = m.get_mut(&k) {
                            prune(child, s, &join(path, &k), unknown, false);
                        }
                    }
                    None if preserve
                        || schema.get("additionalProperties") == Some(&Value::Bool(true)) => {}
                    None => {
                        m.shift_remove(&k);
                        unknown.push(join(path, &k));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, s, &format!("{path}[{i}]"), unknown, false);
                }
            }
        }
        _ => {}
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_num(v: &Value) -> String {
    v.to_string()
}

/// Validate types, required fields, enums, bounds and patterns.
pub fn validate(v: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let invalid = |causes: &mut Vec<Cause>, detail: String| {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {detail}", render(v)),
            field: path.to_string(),
        })
    };
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            invalid(
                causes,
                format!("{path} in body must be of type {t}: \"null\""),
            );
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            invalid(
                causes,
                format!(
                    "{path} in body must be of type integer or string: \"{}\"",
                    type_name(v)
                ),
            );
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (t == "integer" && v.as_f64().is_some_and(|f| f.fract() == 0.0));
        if !ok {
            invalid(
                causes,
                format!("{path} in body must be of type {t}: \"{actual}\""),
            );
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        let supported: Vec<String> = e.iter().map(render).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                render(v),
                supported.join(", ")
            ),
            field: path.to_string(),
        });
    }
    if let Some(x) = num(v) {
        if let Some(min) = schema.get("minimum") {
            let excl = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
            if let Some(m) = num(min)
                && (x < m || (excl && x <= m))
            {
                let word = if excl {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                invalid(
                    causes,
                    format!("{path} in body should be {word} {}", fmt_num(min)),
                );
            }
        }
        if let Some(max) = schema.get("maximum") {
            let excl = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
            if let Some(m) = num(max)
                && (x > m || (excl && x >= m))
            {
                let word = if excl {
                    "less than"
                } else {
                    "less than or equal to"
                };
                invalid(
                    causes,
                    format!("{path} in body should be {word} {}", fmt_num(max)),
                );
            }
        }
        if let Some(m) = schema.get("multipleOf").and_then(num)
            && m > 0.0
            && (x / m).fract().abs() > 1e-9
        {
            invalid(
                causes,
                format!("{path} in body should be a multiple of {m}"),
            );
        }
    }
    if let Some(s) = v.as_str() {
        let n = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && n < min
        {
            invalid(
                causes,
                format!("{path} in body should be at least {min} chars long"),
            );
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && n > max
        {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: may not be more than {max} bytes"),
                field: path.to_string(),
            });
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str)
            && let Ok(re) = regex::Regex::new(p)
            && !re.is_match(s)
        {
            invalid(causes, format!("{path} in body should match '{p}'"));
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            invalid(
                causes,
                format!("{path} in body should have at least {min} items"),
            );
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            causes.push(Cause {
                reason: "FieldValueTooMany",
                message: format!("Too many: {}: must have at most {max} items", items.len()),
                field: path.to_string(),
            });
        }
        let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
        if list_type == Some("set") {
            for (i, it) in items.iter().enumerate() {
                if items[..i].contains(it) {
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        message: format!("Duplicate value: {}", render(it)),
                        field: format!("{path}[{i}]"),
                    });
                }
            }
        }
        if list_type == Some("map")
            && let Some(keys) = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
        {
            for (i, it) in items.iter().enumerate() {
                let dup = items[..i].iter().any(|o| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .all(|k| o.get(k) == it.get(k))
                });
                if dup {
                    let mut m = serde_json::Map::new();
                    for k in keys.iter().filter_map(Value::as_str) {
                        m.insert(k.to_string(), it.get(k).cloned().unwrap_or(Value::Null));
                    }
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        message: format!("Duplicate value: {}", Value::Object(m)),
                        field: format!("{path}[{i}]"),
                    });
                }
            }
        }
        if let Some(s) = schema.get("items") {
            for (i, it) in items.iter().enumerate() {
                validate(it, s, &format!("{path}[{i}]"), causes);
            }
        }
    }
    if let Some(m) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str()
                && !m.contains_key(r)
            {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                    field: join(path, r),
                });
            }
        }
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
            && (m.len() as u64) < min
        {
            invalid(
                causes,
                format!("{path} in body should have at least {min} properties"),
            );
        }
        let props = schema.get("properties").and_then(Value::as_object);
        let addl = schema.get("additionalProperties").filter(|a| a.is_object());
        for (k, child) in m {
            if let Some(s) = props.and_then(|p| p.get(k)).or(addl) {
                validate(child, s, &join(path, k), causes);
            }
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(subs) = schema.get(key).and_then(Value::as_array) {
            let results: Vec<Vec<Cause>> = subs
                .iter()
                .map(|s| {
                    let mut c = vec![];
                    validate(v, s, path, &mut c);
                    c
                })
                .collect();
            let passing = results.iter().filter(|c| c.is_empty()).count();
            match key {
                "allOf" => {
                    for c in results {
                        causes.extend(c);
                    }
                }
                "anyOf" if passing == 0 => invalid(
                    causes,
                    format!("{path} in body must match at least one schema in anyOf"),
                ),
                "oneOf" if passing != 1 => invalid(
                    causes,
                    format!("{path} in body must validate one and only one schema (oneOf)"),
                ),
                _ => {}
            }
        }
    }
    if let Some(not) = schema.get("not") {
        let mut c = vec![];
        validate(v, not, path, &mut c);
        if c.is_empty() {
            invalid(
                causes,
                format!("{path} in body should not validate the schema (not)"),
            );
        }
    }
}

/// Integers where the schema says `number` become doubles, as the apiserver's CEL typing does.
pub fn coerce_numbers(v: &mut Value, schema: &Value) {
    match v {
        Value::Number(n)
            if schema.get("type").and_then(Value::as_str) == Some("number") && !n.is_f64() =>
        {
            if let Some(f) = n.as_f64().and_then(serde_json::Number::from_f64) {
                *v = Value::Number(f);
            }
        }
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let addl = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m.iter_mut() {
                if let Some(s) = props.and_then(|p| p.get(k)).or(addl) {
                    coerce_numbers(child, s);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for it in items.iter_mut() {
                    coerce_numbers(it, s);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_match_the_apiserver() {
        let schema = json!({"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object", "required": ["name"], "properties": {
            "rank": {"type": "integer", "minimum": 1},
            "format": {"type": "string", "enum": ["chat", "text"]},
            "name": {"type": "string"}}}}});
        let mut causes = vec![];
        validate(
            &json!({"spec": {"rank": 0, "format": "xml"}}),
            &schema,
            "",
            &mut causes,
        );
        let msgs: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert!(msgs.contains(&"spec.rank: Invalid value: 0: spec.rank in body should be greater than or equal to 1".to_string()), "{msgs:?}");
        assert!(
            msgs.contains(
                &"spec.format: Unsupported value: \"xml\": supported values: \"chat\", \"text\""
                    .to_string()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"spec.name: Required value".to_string()),
            "{msgs:?}"
        );
    }
}
