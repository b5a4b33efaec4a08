//! OpenAPI v3 documents, enough for kubectl: per group/version paths that advertise
//! server-side field validation (so kubectl validates through the server), and the CRD schemas
//! for `kubectl explain`.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cluster::Cluster;
use crate::resources::ResourceType;

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn schema_name(rt: &ResourceType) -> String {
    let group = if rt.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else if rt.group.contains('.') && rt.crd.is_some() {
        rt.group.split('.').rev().collect::<Vec<_>>().join(".")
    } else {
        format!("io.k8s.api.{}", rt.group.split('.').next().unwrap_or(""))
    };
    format!("{group}.{}.{}", rt.version, rt.kind)
}

fn gvk(rt: &ResourceType) -> Value {
    json!({"group": rt.group, "version": rt.version, "kind": rt.kind})
}

fn param(name: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "description": name, "schema": {"type": kind, "uniqueItems": true}})
}

fn object_schema(rt: &ResourceType) -> Value {
    let mut s = match &rt.crd {
        Some(c) => c.schema.clone(),
        None => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "description": format!("{} is a built-in Kubernetes kind served by tailor-sim.", rt.kind)}),
    };
    s["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values."});
    s["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to."});
    s["properties"]["metadata"] = json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"});
    s["x-kubernetes-group-version-kind"] = json!([gvk(rt)]);
    s
}

fn object_meta() -> Value {
    let str_ = |d: &str| json!({"type": "string", "description": d});
    json!({"type": "object", "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
    "properties": {
        "name": str_("Name must be unique within a namespace."),
        "generateName": str_("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
        "namespace": str_("Namespace defines the space within which each name must be unique."),
        "uid": str_("UID is the unique in time and space value for this object."),
        "resourceVersion": str_("An opaque value that represents the internal version of this object."),
        "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
        "creationTimestamp": str_("CreationTimestamp is a timestamp representing the server time when this object was created."),
        "deletionTimestamp": str_("DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."),
        "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize objects."},
        "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map stored with a resource."},
        "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Must be empty before the object is deleted from the registry."},
        "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "List of objects depended by this object."},
        "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."},
    }})
}

pub fn gv_doc(cluster: &Cluster, group: &str, version: &str) -> Option<Value> {
    let types: Vec<_> = cluster
        .registry
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    schemas.insert(OBJECT_META.into(), object_meta());
    for t in &types {
        let name = schema_name(t);
        let sref = json!({"$ref": format!("#/components/schemas/{name}")});
        schemas.insert(name.clone(), object_schema(t));
        let body = |types: &[&str]| {
            let mut c = serde_json::Map::new();
            for ty in types {
                c.insert(ty.to_string(), json!({"schema": sref}));
            }
            json!({"content": c, "required": true})
        };
        let resp = json!({"200": {"description": "OK", "content": {"application/json": {"schema": sref}}}});
        let op = |action: &str, params: Vec<Value>, rb: Option<Value>| {
            let mut o = json!({"operationId": format!("{action}{}", t.kind), "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk(t), "responses": resp, "parameters": params});
            if let Some(rb) = rb {
                o["requestBody"] = rb;
            }
            o
        };
        let write_params = || {
            vec![
                param("dryRun", "string"),
                param("fieldManager", "string"),
                param("fieldValidation", "string"),
            ]
        };
        let mut patch_params = write_params();
        patch_params.push(param("force", "boolean"));
        let base = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{prefix}/{}", t.plural)
        };
        let mut item = serde_json::Map::new();
        item.insert("get".into(), op("get", vec![], None));
        item.insert(
            "put".into(),
            op("put", write_params(), Some(body(&["application/json"]))),
        );
        item.insert(
            "patch".into(),
            op(
                "patch",
                patch_params,
                Some(body(&[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ])),
            ),
        );
        item.insert(
            "delete".into(),
            op("delete", vec![param("dryRun", "string")], None),
        );
        paths.insert(format!("{base}/{{name}}"), Value::Object(item));
        let mut coll = serde_json::Map::new();
        coll.insert(
            "get".into(),
            op(
                "list",
                vec![
                    param("labelSelector", "string"),
                    param("fieldSelector", "string"),
                    param("watch", "boolean"),
                ],
                None,
            ),
        );
        coll.insert(
            "post".into(),
            op("post", write_params(), Some(body(&["application/json"]))),
        );
        paths.insert(base, Value::Object(coll));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

pub fn root(cluster: &Cluster) -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![(String::new(), "v1".to_string())];
    for (g, vs) in cluster.registry.groups() {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    for (g, v) in gvs {
        let key = if g.is_empty() {
            "api/v1".to_string()
        } else {
            format!("apis/{g}/{v}")
        };
        let doc = gv_doc(cluster, &g, &v).unwrap_or(Value::Null);
        let hash = hex::encode(Sha256::digest(doc.to_string().as_bytes()));
        paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", &hash[..32].to_uppercase())}));
    }
    json!({"paths": paths})
}
