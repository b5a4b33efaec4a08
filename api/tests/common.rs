#![allow(dead_code)] // each test binary uses a different part of this module
//! Admission as the apiserver does it for tailor's CRDs, built from real validators: the
//! structural schema through a JSON-schema validator (`jsonschema`) and the CEL rules through a
//! CEL interpreter (`kube-cel`). Nothing here re-implements a rule.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)"))
        .join("..")
}

/// Every YAML document in a file.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn crd_for_kind(kind: &str) -> Option<CustomResourceDefinition> {
    tailor_api::crds()
        .into_iter()
        .map(|(_, crd)| crd)
        .find(|crd| crd.spec.names.kind == kind)
}

/// The `openAPIV3Schema` of a kind, as JSON.
pub fn schema_of(kind: &str) -> Value {
    let crd = crd_for_kind(kind).unwrap_or_else(|| panic!("no CRD for {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("schema to json")
}

/// OpenAPI v3 (Kubernetes flavour) → JSON Schema: `nullable: true` widens the type to accept
/// null, and `metadata` is validated by the apiserver itself, not the CRD schema.
fn to_json_schema(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.get("nullable") == Some(&Value::Bool(true))
                    && let Some(Value::String(t)) = map.get("type").cloned()
                {
                    map.insert("type".into(), serde_json::json!([t, "null"]));
                }
                if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                    map.remove("type");
                    map.insert(
                        "anyOf".into(),
                        serde_json::json!([{"type":"integer"},{"type":"string"}]),
                    );
                }
                for (_, child) in map.iter_mut() {
                    walk(child);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    if let Some(props) = v.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("metadata".into(), serde_json::json!({"type": "object"}));
    }
    v
}

/// Errors the apiserver would answer for `obj` (create, or update when `old` is given), each
/// as `path: message`. Empty when admitted.
pub fn admission_errors(obj: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = obj["kind"].as_str().expect("kind");
    let schema = schema_of(kind);
    let validator =
        jsonschema::validator_for(&to_json_schema(schema.clone())).expect("valid schema");
    let defaulted = kube_cel::apply_defaults(&schema, obj);
    let mut errors: Vec<String> = validator
        .iter_errors(&defaulted)
        .map(|e| {
            format!(
                "{}: {}",
                json_pointer_to_path(&e.instance_path().to_string()),
                e
            )
        })
        .collect();
    if errors.is_empty()
        && let Err(cel) = kube_cel::Validator::new().validate(&schema, obj, old)
    {
        errors.extend(
            cel.into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    errors
}

/// `/spec/source` → `spec.source`, `/spec/adapters/1/name` → `spec.adapters[1].name`.
fn json_pointer_to_path(ptr: &str) -> String {
    let mut out = String::new();
    for seg in ptr.split('/').filter(|s| !s.is_empty()) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}
