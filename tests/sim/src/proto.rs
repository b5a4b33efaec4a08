//! Just enough of the Kubernetes protobuf encoding to read the bodies kubectl's typed clients
//! send (`kubectl create namespace|serviceaccount|configmap|secret|role|rolebinding|token`,
//! `kubectl auth can-i`). Other kinds sent as protobuf get 415, never a guess.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::status::{ApiError, ApiResult};

#[derive(Clone, Copy)]
enum F {
    Str,
    Int,
    Bool,
    Msg(&'static [(u64, &'static str, F)]),
    RepStr,
    RepMsg(&'static [(u64, &'static str, F)]),
    MapStr,
    MapBytes,
}

const OWNER_REF: &[(u64, &str, F)] = &[
    (5, "apiVersion", F::Str),
    (1, "kind", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (6, "controller", F::Bool),
    (7, "blockOwnerDeletion", F::Bool),
];
const META: &[(u64, &str, F)] = &[
    (1, "name", F::Str),
    (2, "generateName", F::Str),
    (3, "namespace", F::Str),
    (5, "uid", F::Str),
    (6, "resourceVersion", F::Str),
    (7, "generation", F::Int),
    (11, "labels", F::MapStr),
    (12, "annotations", F::MapStr),
    (13, "ownerReferences", F::RepMsg(OWNER_REF)),
    (14, "finalizers", F::RepStr),
];
const LOCAL_REF: &[(u64, &str, F)] = &[(1, "name", F::Str)];
const OBJ_REF: &[(u64, &str, F)] = &[
    (1, "kind", F::Str),
    (2, "namespace", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (5, "apiVersion", F::Str),
];
const NS_SPEC: &[(u64, &str, F)] = &[(1, "finalizers", F::RepStr)];
const NAMESPACE: &[(u64, &str, F)] = &[(1, "metadata", F::Msg(META)), (2, "spec", F::Msg(NS_SPEC))];
const SERVICE_ACCOUNT: &[(u64, &str, F)] = &[
    (1, "metadata", F::Msg(META)),
    (2, "secrets", F::RepMsg(OBJ_REF)),
    (3, "imagePullSecrets", F::RepMsg(LOCAL_REF)),
    (4, "automountServiceAccountToken", F::Bool),
];
const CONFIG_MAP: &[(u64, &str, F)] = &[
    (1, "metadata", F::Msg(META)),
    (2, "data", F::MapStr),
    (3, "binaryData", F::MapBytes),
    (4, "immutable", F::Bool),
];
const SECRET: &[(u64, &str, F)] = &[
    (1, "metadata", F::Msg(META)),
    (2, "data", F::MapBytes),
    (3, "type", F::Str),
    (4, "stringData", F::MapStr),
    (5, "immutable", F::Bool),
];
const POLICY_RULE: &[(u64, &str, F)] = &[
    (1, "verbs", F::RepStr),
    (2, "apiGroups", F::RepStr),
    (3, "resources", F::RepStr),
    (4, "resourceNames", F::RepStr),
    (5, "nonResourceURLs", F::RepStr),
];
const ROLE: &[(u64, &str, F)] = &[
    (1, "metadata", F::Msg(META)),
    (2, "rules", F::RepMsg(POLICY_RULE)),
];
const SUBJECT: &[(u64, &str, F)] = &[
    (1, "kind", F::Str),
    (2, "apiGroup", F::Str),
    (3, "name", F::Str),
    (4, "namespace", F::Str),
];
const ROLE_REF: &[(u64, &str, F)] = &[
    (1, "apiGroup", F::Str),
    (2, "kind", F::Str),
    (3, "name", F::Str),
];
const BINDING: &[(u64, &str, F)] = &[
    (1, "metadata", F::Msg(META)),
    (2, "subjects", F::RepMsg(SUBJECT)),
    (3, "roleRef", F::Msg(ROLE_REF)),
];
const BOUND_REF: &[(u64, &str, F)] = &[
    (1, "kind", F::Str),
    (2, "apiVersion", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
];
const TOKEN_SPEC: &[(u64, &str, F)] = &[
    (1, "audiences", F::RepStr),
    (4, "expirationSeconds", F::Int),
    (3, "boundObjectRef", F::Msg(BOUND_REF)),
];
const TOKEN_REQUEST: &[(u64, &str, F)] = &[
    (1, "metadata", F::Msg(META)),
    (2, "spec", F::Msg(TOKEN_SPEC)),
];
const RES_ATTRS: &[(u64, &str, F)] = &[
    (1, "namespace", F::Str),
    (2, "verb", F::Str),
    (3, "group", F::Str),
    (4, "version", F::Str),
    (5, "resource", F::Str),
    (6, "subresource", F::Str),
    (7, "name", F::Str),
];
const NONRES_ATTRS: &[(u64, &str, F)] = &[(1, "path", F::Str), (2, "verb", F::Str)];
const SSAR_SPEC: &[(u64, &str, F)] = &[
    (1, "resourceAttributes", F::Msg(RES_ATTRS)),
    (2, "nonResourceAttributes", F::Msg(NONRES_ATTRS)),
];
const SSAR: &[(u64, &str, F)] = &[
    (1, "metadata", F::Msg(META)),
    (2, "spec", F::Msg(SSAR_SPEC)),
];
const SSR: &[(u64, &str, F)] = &[(1, "metadata", F::Msg(META))];

fn schema_for(kind: &str) -> Option<&'static [(u64, &'static str, F)]> {
    Some(match kind {
        "Namespace" => NAMESPACE,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "Role" | "ClusterRole" => ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        "TokenRequest" => TOKEN_REQUEST,
        "SelfSubjectAccessReview" => SSAR,
        "SelfSubjectReview" => SSR,
        _ => return None,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// (field number, wire type, payload: varint value or bytes)
    fn next(&mut self) -> Option<(u64, u64, u64, &'a [u8])> {
        if self.i >= self.b.len() {
            return None;
        }
        let key = self.varint()?;
        let (field, wt) = (key >> 3, key & 7);
        match wt {
            0 => Some((field, wt, self.varint()?, &[])),
            1 => {
                let s = self.b.get(self.i..self.i + 8)?;
                self.i += 8;
                Some((field, wt, 0, s))
            }
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                let s = self.b.get(self.i..self.i + n)?;
                self.i += n;
                Some((field, wt, 0, s))
            }
            5 => {
                let s = self.b.get(self.i..self.i + 4)?;
                self.i += 4;
                Some((field, wt, 0, s))
            }
            _ => None,
        }
    }
}

fn map_entry(b: &[u8]) -> (String, Vec<u8>) {
    let mut r = Reader { b, i: 0 };
    let (mut k, mut v) = (String::new(), vec![]);
    while let Some((f, _, _, s)) = r.next() {
        match f {
            1 => k = String::from_utf8_lossy(s).into_owned(),
            2 => v = s.to_vec(),
            _ => {}
        }
    }
    (k, v)
}

fn decode_msg(b: &[u8], schema: &[(u64, &str, F)]) -> Value {
    let mut out = Map::new();
    let mut r = Reader { b, i: 0 };
    while let Some((field, _, num, bytes)) = r.next() {
        let Some((_, name, ty)) = schema.iter().find(|(n, _, _)| *n == field) else {
            continue;
        };
        let name = name.to_string();
        let s = || Value::String(String::from_utf8_lossy(bytes).into_owned());
        match ty {
            F::Str => {
                out.insert(name, s());
            }
            F::Int => {
                out.insert(name, json!(num as i64));
            }
            F::Bool => {
                out.insert(name, json!(num != 0));
            }
            F::Msg(sub) => {
                out.insert(name, decode_msg(bytes, sub));
            }
            F::RepStr => {
                if let Value::Array(a) = out.entry(name).or_insert(json!([])) {
                    a.push(s());
                }
            }
            F::RepMsg(sub) => {
                if let Value::Array(a) = out.entry(name).or_insert(json!([])) {
                    a.push(decode_msg(bytes, sub));
                }
            }
            F::MapStr | F::MapBytes => {
                let (k, v) = map_entry(bytes);
                let val = if matches!(ty, F::MapBytes) {
                    json!(base64::engine::general_purpose::STANDARD.encode(v))
                } else {
                    json!(String::from_utf8_lossy(&v))
                };
                if let Value::Object(m) = out.entry(name).or_insert(json!({})) {
                    m.insert(k, val);
                }
            }
        }
    }
    Value::Object(out)
}

/// Decode a `k8s\0`-framed protobuf object into its JSON form.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let unsupported = |what: &str| {
        ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({what} is not supported as protobuf by tailor-sim)"
        ))
    };
    let payload = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| unsupported("unframed protobuf"))?;
    let mut r = Reader { b: payload, i: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((f, _, _, s)) = r.next() {
        match f {
            1 => {
                let mut tr = Reader { b: s, i: 0 };
                while let Some((tf, _, _, ts)) = tr.next() {
                    match tf {
                        1 => api_version = String::from_utf8_lossy(ts).into_owned(),
                        2 => kind = String::from_utf8_lossy(ts).into_owned(),
                        _ => {}
                    }
                }
            }
            2 => raw = s,
            _ => {}
        }
    }
    let schema = schema_for(&kind).ok_or_else(|| unsupported(&kind))?;
    let mut v = decode_msg(raw, schema);
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}
