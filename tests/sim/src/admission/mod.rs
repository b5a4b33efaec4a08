//! Admission: defaults and validation for built-in kinds, and for custom resources the CRD's
//! structural schema (pruning, defaults, types and bounds) followed by its CEL rules.

pub mod builtin;
pub mod pod_security;
pub mod schema;

use serde_json::Value;

use crate::status::{ApiError, Cause};

/// What the API machinery keeps of one served version of a CRD.
#[derive(Debug)]
pub struct CrdSchema {
    pub crd_name: String,
    pub group: String,
    pub kind: String,
    pub version: String,
    /// `openAPIV3Schema` of this version.
    pub schema: Value,
    pub printer_columns: Vec<Value>,
    pub scale: Option<Value>,
}

impl CrdSchema {
    /// Prune, default and validate a custom resource; returns the object as stored plus the
    /// unknown fields that were dropped (reported as warnings, or errors under Strict).
    pub fn admit(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        strict: bool,
    ) -> Result<Vec<String>, ApiError> {
        let mut unknown = vec![];
        schema::prune(obj, &self.schema, "", &mut unknown, true);
        if strict && !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                self.kind,
                self.version,
                self.kind,
                list.join(", ")
            )));
        }
        *obj = kube_cel::apply_defaults(&self.schema, obj);
        let mut causes = vec![];
        let mut body = obj.clone();
        if let Some(m) = body.as_object_mut() {
            // ObjectMeta is validated by the generic machinery, not the CRD schema.
            m.remove("metadata");
        }
        let mut root = self.schema.clone();
        if let Some(p) = root.get_mut("properties").and_then(Value::as_object_mut) {
            p.remove("metadata");
        }
        schema::validate(&body, &root, "", &mut causes);
        // CEL rules run unless a type error would make them meaningless.
        if !causes.iter().any(|c| c.message.contains("must be of type")) {
            let validator = kube_cel::Validator::new();
            let old_body = old.map(|o| {
                let mut o = o.clone();
                if let Some(m) = o.as_object_mut() {
                    m.remove("metadata");
                }
                o
            });
            let mut cel_body = kube_cel::apply_defaults(&root, &body);
            schema::coerce_numbers(&mut cel_body, &root);
            let old_body = old_body.map(|o| {
                let mut o = kube_cel::apply_defaults(&root, &o);
                schema::coerce_numbers(&mut o, &root);
                o
            });
            if let Err(errs) = validator.validate(&root, &cel_body, old_body.as_ref()) {
                for e in errs.into_vec() {
                    let ty = schema::type_at(&root, &e.field_path);
                    let (reason, message) = match e.reason.as_deref() {
                        Some("FieldValueForbidden") => {
                            ("FieldValueForbidden", format!("Forbidden: {}", e.message))
                        }
                        Some("FieldValueRequired") => (
                            "FieldValueRequired",
                            format!("Required value: {}", e.message),
                        ),
                        Some("FieldValueDuplicate") => (
                            "FieldValueDuplicate",
                            format!("Duplicate value: {}", e.message),
                        ),
                        _ => (
                            "FieldValueInvalid",
                            format!("Invalid value: \"{ty}\": {}", e.message),
                        ),
                    };
                    causes.push(Cause {
                        reason,
                        message,
                        field: if e.field_path.is_empty() {
                            "<nil>".into()
                        } else {
                            e.field_path
                        },
                    });
                }
            }
        }
        if causes.is_empty() {
            Ok(unknown)
        } else {
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            Err(ApiError::invalid(&self.group, &self.kind, name, causes))
        }
    }
}
