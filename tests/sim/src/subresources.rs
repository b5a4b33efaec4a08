//! Subresources other than status and log (token, scale, binding, eviction, finalize) and the
//! access-review endpoints.

use std::sync::Arc;

use http::{Method, Response};
use serde_json::{Value, json};

use crate::auth;
use crate::cluster::{Cluster, DeleteOpts, PatchType, WriteOpts};
use crate::rbac::{self, Attributes};
use crate::resources::ResourceType;
use crate::server::{Body, Req, json_response};
use crate::status::{ApiError, ApiResult};

pub fn serve(
    cluster: &Arc<Cluster>,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    sub: &str,
    req: &Req,
) -> ApiResult<Response<Body>> {
    match (sub, &req.method) {
        ("token", &Method::POST) => {
            let sa = cluster.get(rt, ns, name)?;
            let body = req.body_value()?;
            let exp = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
            let audiences: Vec<String> = body["spec"]["audiences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let bound = &body["spec"]["boundObjectRef"];
            let pod = if bound["kind"].as_str() == Some("Pod") {
                let pn = bound["name"].as_str().unwrap_or("");
                let p = cluster
                    .store
                    .get("/pods", ns, pn)
                    .ok_or_else(|| ApiError::not_found("", "pods", pn))?;
                Some((
                    pn.to_string(),
                    p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                ))
            } else {
                None
            };
            let (token, exp_at) = auth::issue_token(
                cluster,
                ns,
                name,
                sa["metadata"]["uid"].as_str().unwrap_or(""),
                exp,
                pod.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                &audiences,
            );
            let ts = chrono::DateTime::from_timestamp(exp_at, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let mut out = body.clone();
            if !out.is_object() {
                out = json!({"spec": {}});
            }
            out["kind"] = json!("TokenRequest");
            out["apiVersion"] = json!("authentication.k8s.io/v1");
            out["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
            out["spec"]["audiences"] = json!(if audiences.is_empty() {
                vec![auth::ISSUER.to_string()]
            } else {
                audiences
            });
            out["spec"]["expirationSeconds"] = json!(exp);
            out["status"] = json!({"token": token, "expirationTimestamp": ts});
            Ok(json_response(201, &out, &[]))
        }
        ("binding", &Method::POST) => {
            let body = req.body_value()?;
            let node = body["target"]["name"].as_str().unwrap_or("").to_string();
            let pod = cluster.get(rt, ns, name)?;
            if pod["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    name,
                    format!(
                        "pod {name} is already assigned to node {:?}",
                        pod["spec"]["nodeName"].as_str().unwrap_or("")
                    ),
                ));
            }
            cluster.patch(
                rt,
                ns,
                name,
                PatchType::Merge,
                &json!({"spec": {"nodeName": node}}),
                &WriteOpts::system("kube-scheduler"),
            )?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ))
        }
        ("eviction", &Method::POST) => {
            let (o, _) = cluster.delete(rt, ns, name, &DeleteOpts::default())?;
            let _ = o;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ))
        }
        ("scale", m) => {
            let paths = ScalePaths::of(rt);
            if *m == Method::PUT || *m == Method::PATCH {
                let body = req.body_value()?;
                let replicas = if *m == Method::PATCH {
                    let mut cur = scale_of(rt, &*cluster.get(rt, ns, name)?);
                    match req
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                    {
                        ct if ct.starts_with("application/json-patch+json") => {
                            crate::patch::json_patch(&mut cur, &body)?
                        }
                        _ => crate::patch::merge_patch(&mut cur, &body),
                    }
                    cur["spec"]["replicas"].clone()
                } else {
                    body["spec"]["replicas"].clone()
                };
                if !replicas.is_i64() || replicas.as_i64().is_some_and(|r| r < 0) {
                    return Err(ApiError::invalid(
                        "autoscaling",
                        "Scale",
                        name,
                        vec![crate::status::Cause {
                            reason: "FieldValueInvalid",
                            message: format!(
                                "Invalid value: {replicas}: must be greater than or equal to 0"
                            ),
                            field: "spec.replicas".into(),
                        }],
                    ));
                }
                cluster.patch(
                    rt,
                    ns,
                    name,
                    PatchType::Merge,
                    &at_path(&paths.spec, replicas),
                    &WriteOpts::system("kubectl-scale"),
                )?;
            }
            let o = cluster.get(rt, ns, name)?;
            Ok(json_response(200, &scale_of(rt, &o), &[]))
        }
        ("finalize", &Method::PUT) => {
            let body = req.body_value()?;
            let mut cur = (*cluster.get(rt, ns, name)?).clone();
            cur["spec"]["finalizers"] = body["spec"]["finalizers"].clone();
            let w = cluster.update(rt, ns, name, cur, &WriteOpts::system("namespace-finalize"))?;
            Ok(json_response(200, &w.obj, &[]))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// Where a kind keeps what its `scale` subresource shows: built-in kinds `.spec.replicas`,
/// `.status.replicas` and their `spec.selector`; a custom resource where its CRD's scale
/// subresource says (specReplicasPath, statusReplicasPath, labelSelectorPath).
struct ScalePaths {
    spec: Vec<String>,
    status: Vec<String>,
    selector: Option<Vec<String>>,
}

fn split_path(p: &str) -> Vec<String> {
    p.split('.')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl ScalePaths {
    fn of(rt: &ResourceType) -> ScalePaths {
        match rt.crd.as_ref().and_then(|c| c.scale.as_ref()) {
            Some(sc) => ScalePaths {
                spec: split_path(sc["specReplicasPath"].as_str().unwrap_or(".spec.replicas")),
                status: split_path(
                    sc["statusReplicasPath"]
                        .as_str()
                        .unwrap_or(".status.replicas"),
                ),
                selector: sc["labelSelectorPath"].as_str().map(split_path),
            },
            None => ScalePaths {
                spec: split_path(".spec.replicas"),
                status: split_path(".status.replicas"),
                selector: None,
            },
        }
    }
}

fn value_at<'a>(o: &'a Value, path: &[String]) -> &'a Value {
    path.iter().fold(o, |v, k| &v[k.as_str()])
}

/// A merge patch setting `path` to `v`.
fn at_path(path: &[String], v: Value) -> Value {
    path.iter()
        .rev()
        .fold(v, |inner, k| json!({ k.as_str(): inner }))
}

fn scale_of(rt: &ResourceType, o: &Value) -> Value {
    let paths = ScalePaths::of(rt);
    let sel = match &paths.selector {
        Some(p) => value_at(o, p).as_str().map(String::from),
        None => o["spec"]["selector"]["matchLabels"].as_object().map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        }),
    };
    let default = if rt.kind == "Job" || rt.crd.is_some() {
        0
    } else {
        1
    };
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "uid": o["metadata"]["uid"], "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
        "spec": {"replicas": value_at(o, &paths.spec).as_i64().unwrap_or(default)},
        "status": {"replicas": value_at(o, &paths.status).as_i64().unwrap_or(0), "selector": sel.unwrap_or_default()}})
}

/// SelfSubjectAccessReview, SubjectAccessReview, TokenReview, SelfSubjectReview.
pub fn review(cluster: &Arc<Cluster>, rt: &ResourceType, req: &Req) -> ApiResult<Response<Body>> {
    let mut body = req.body_value()?;
    if !body.is_object() {
        body = json!({});
    }
    body["apiVersion"] = json!(rt.api_version());
    body["kind"] = json!(rt.kind);
    match rt.plural.as_str() {
        "selfsubjectaccessreviews" | "subjectaccessreviews" => {
            let user = if rt.plural == "subjectaccessreviews" {
                auth::User {
                    name: body["spec"]["user"].as_str().unwrap_or("").to_string(),
                    groups: body["spec"]["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str().map(String::from))
                        .collect(),
                    uid: String::new(),
                }
            } else {
                req.user.clone()
            };
            let ra = &body["spec"]["resourceAttributes"];
            let allowed = if ra.is_object() {
                rbac::allowed(
                    cluster,
                    &user,
                    &Attributes {
                        verb: ra["verb"].as_str().unwrap_or("").into(),
                        group: ra["group"].as_str().unwrap_or("").into(),
                        resource: ra["resource"].as_str().unwrap_or("").into(),
                        subresource: ra["subresource"].as_str().unwrap_or("").into(),
                        namespace: ra["namespace"].as_str().unwrap_or("").into(),
                        name: ra["name"].as_str().unwrap_or("").into(),
                    },
                )
            } else {
                user.is_admin() || user.groups.iter().any(|g| g == "system:authenticated")
            };
            body["status"] = json!({"allowed": allowed});
        }
        "tokenreviews" => {
            let token = body["spec"]["token"].as_str().unwrap_or("").to_string();
            match auth::authenticate(cluster, Some(&format!("Bearer {token}"))) {
                Some(u) => {
                    body["status"] = json!({"authenticated": true, "user": {"username": u.name, "uid": u.uid, "groups": u.groups}, "audiences": [auth::ISSUER]})
                }
                None => body["status"] = json!({"authenticated": false}),
            }
        }
        _ => {
            body["status"] = json!({"userInfo": {"username": req.user.name, "uid": req.user.uid, "groups": req.user.groups}});
        }
    }
    Ok(json_response(201, &body, &[]))
}
