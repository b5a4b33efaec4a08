//! HTTPS front end: authentication, RBAC, routing of Kubernetes API paths to the API core,
//! content negotiation (JSON, Table, PartialObjectMetadata) and watch streams.
//!
//! Size (over 700 lines, on purpose): the one route table of the Kubernetes API paths and the
//! negotiation every route shares.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::{self, User};
use crate::cluster::{Cluster, DeleteOpts, FieldValidation, PatchType, WriteOpts};
use crate::rbac::{self, Attributes};
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, success_status};
use crate::{discovery, logs, openapi, subresources, table, watch};

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub fn json_response(code: u16, v: &Value, warnings: &[String]) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header("Content-Type", "application/json");
    for w in warnings {
        r = r.header("Warning", format!("299 - {:?}", w));
    }
    r.body(full(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(full("")))
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status(), &[])
}

pub fn stream_response(rx: mpsc::Receiver<Bytes>, content_type: &str) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header("Content-Type", content_type)
        .header("Transfer-Encoding", "chunked")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(full("")))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// A parsed resource path.
#[derive(Debug, Clone)]
pub struct ResPath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub sub: Option<String>,
}

fn parse_res_path(segs: &[&str]) -> Option<ResPath> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let mut p = ResPath {
        group,
        version,
        namespace: None,
        plural: String::new(),
        name: None,
        sub: None,
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(p.group.is_empty()
                && (*plural == "status" || *plural == "finalize")
                && tail.is_empty()) =>
        {
            p.namespace = Some(ns.to_string());
            p.plural = plural.to_string();
            p.name = tail.first().map(|s| s.to_string());
            p.sub = tail.get(1).map(|s| s.to_string());
            if tail.len() > 2 {
                return None;
            }
        }
        [plural, tail @ ..] => {
            p.plural = plural.to_string();
            p.name = tail.first().map(|s| s.to_string());
            p.sub = tail.get(1).map(|s| s.to_string());
            if tail.len() > 2 {
                return None;
            }
        }
        _ => return None,
    }
    Some(p)
}

pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: HashMap<String, String>,
    pub body: Bytes,
    pub user: User,
}

impl Req {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    fn accept(&self) -> &str {
        self.headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }

    /// The JSON (or YAML) request body.
    pub fn body_value(&self) -> ApiResult<Value> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        if self
            .content_type()
            .starts_with("application/vnd.kubernetes.protobuf")
        {
            return crate::proto::decode(&self.body);
        }
        if let Ok(v) = serde_json::from_slice(&self.body) {
            return Ok(v);
        }
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
        serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
    }

    fn manager(&self, default_op: &str) -> String {
        if let Some(m) = self.q("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        // The apiserver derives the manager from the user agent's program name.
        let ua = self
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        let prog = ua.split('/').next().unwrap_or("unknown");
        if prog.is_empty() {
            default_op.to_string()
        } else {
            prog.to_string()
        }
    }

    fn write_opts(&self, sub: &str) -> WriteOpts {
        WriteOpts {
            manager: self.manager("unknown"),
            dry_run: self.q("dryRun") == Some("All"),
            validation: match self.q("fieldValidation") {
                Some("Strict") => FieldValidation::Strict,
                Some("Ignore") => FieldValidation::Ignore,
                _ => FieldValidation::Warn,
            },
            subresource: sub.to_string(),
            force: self.q("force") == Some("true"),
        }
    }
}

pub async fn handle(
    cluster: Arc<Cluster>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query());
    let authz = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let public = matches!(
        path.as_str(),
        "/healthz" | "/livez" | "/readyz" | "/version"
    );
    let user = match auth::authenticate(&cluster, authz.as_deref()) {
        Some(u) => u,
        None if public => User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            uid: String::new(),
        },
        None => return Ok(error_response(&ApiError::unauthorized())),
    };
    let user = match impersonate(&cluster, user, &parts.headers) {
        Ok(u) => u,
        Err(e) => return Ok(error_response(&e)),
    };
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_response(&ApiError::bad_request(format!(
                "reading body: {e}"
            ))));
        }
    };
    let req = Req {
        method: parts.method.clone(),
        headers: parts.headers,
        query,
        body,
        user,
    };
    let started = std::time::Instant::now();
    let resp = route(&cluster, &path, &req).await;
    let resp = resp.unwrap_or_else(|e| error_response(&e));
    tracing::debug!(method = %req.method, path, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    Ok(resp)
}

/// `Impersonate-User`/`Impersonate-Group` (kubectl --as/--as-group), allowed by RBAC's
/// `impersonate` verb as in the apiserver.
fn impersonate(cluster: &Cluster, user: User, headers: &HeaderMap) -> ApiResult<User> {
    let Some(name) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(user);
    };
    let attrs = Attributes {
        verb: "impersonate".into(),
        group: String::new(),
        resource: "users".into(),
        subresource: String::new(),
        namespace: String::new(),
        name: name.to_string(),
    };
    if !rbac::allowed(cluster, &user, &attrs) {
        return Err(ApiError::forbidden(format!(
            "users \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
            user.name
        )));
    }
    let mut groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect();
    if let Some(rest) = name.strip_prefix("system:serviceaccount:")
        && let Some((ns, _)) = rest.split_once(':')
    {
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    groups.push("system:authenticated".into());
    Ok(User {
        name: name.to_string(),
        groups,
        uid: String::new(),
    })
}

async fn route(cluster: &Arc<Cluster>, path: &str, req: &Req) -> ApiResult<Response<Body>> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get = req.method == Method::GET;
    match segs.as_slice() {
        ["healthz"] | ["livez"] | ["readyz"] => {
            return Ok(Response::builder()
                .status(200)
                .header("Content-Type", "text/plain")
                .body(full("ok"))
                .unwrap_or_else(|_| Response::new(full(""))));
        }
        ["version"] if get => return Ok(json_response(200, &discovery::version(), &[])),
        ["api"] if get => return Ok(json_response(200, &discovery::api_versions(cluster), &[])),
        ["apis"] if get => return Ok(json_response(200, &discovery::api_group_list(cluster), &[])),
        ["api", v] if get => {
            return discovery::resource_list(cluster, "", v)
                .map(|d| json_response(200, &d, &[]))
                .ok_or_else(|| ApiError::not_found("", "", v));
        }
        ["apis", g] if get => {
            return discovery::api_group(cluster, g)
                .map(|d| json_response(200, &d, &[]))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                });
        }
        ["apis", g, v] if get => {
            return discovery::resource_list(cluster, g, v)
                .map(|d| json_response(200, &d, &[]))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                });
        }
        ["openapi", "v3"] if get => return Ok(json_response(200, &openapi::root(cluster), &[])),
        ["openapi", "v3", "api", "v1"] if get => {
            return openapi::gv_doc(cluster, "", "v1")
                .map(|d| json_response(200, &d, &[]))
                .ok_or_else(|| ApiError::new(404, "NotFound", "not found"));
        }
        ["openapi", "v3", "apis", g, v] if get => {
            return openapi::gv_doc(cluster, g, v)
                .map(|d| json_response(200, &d, &[]))
                .ok_or_else(|| ApiError::new(404, "NotFound", "not found"));
        }
        ["openapi", "v2"] => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "OpenAPI v2 is not served by tailor-sim; use /openapi/v3",
            ));
        }
        _ => {}
    }
    let Some(rp) = parse_res_path(&segs) else {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let rt = cluster
        .registry
        .find(&rp.group, &rp.version, &rp.plural)
        .ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })?;
    if !rt.namespaced && rp.namespace.is_some() {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let verb = match (&req.method, &rp.name) {
        (&Method::GET, None) if matches!(req.q("watch"), Some("true") | Some("1")) => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) if matches!(req.q("watch"), Some("true") | Some("1")) => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::DELETE, Some(_)) => "delete",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                req.method
            )));
        }
    };
    if !rt.verbs.contains(&verb) && rp.sub.is_none() {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let attrs = Attributes {
        verb: verb.to_string(),
        group: rt.group.clone(),
        resource: rt.plural.clone(),
        subresource: rp.sub.clone().unwrap_or_default(),
        namespace: rp.namespace.clone().unwrap_or_default(),
        name: rp.name.clone().unwrap_or_default(),
    };
    if !rbac::allowed(cluster, &req.user, &attrs) {
        return Err(rbac::forbidden(&req.user, &attrs));
    }
    let ns = rp.namespace.clone().unwrap_or_default();
    if let Some(sub) = &rp.sub {
        let name = rp.name.clone().unwrap_or_default();
        if rt.plural == "pods"
            && matches!(sub.as_str(), "exec" | "attach" | "portforward" | "proxy")
        {
            return Err(ApiError::not_implemented(format!(
                "pods/{sub} is not supported by tailor-sim (pods are local processes: reach them at their pod IP)"
            )));
        }
        if !rt.subresources.contains(&sub.as_str()) {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
        return match sub.as_str() {
            "status" => resource_verb(cluster, &rt, &ns, Some(&name), verb, "status", req).await,
            "log" => logs::serve(cluster, &ns, &name, req).await,
            _ => subresources::serve(cluster, &rt, &ns, &name, sub, req),
        };
    }
    if rt.plural.ends_with("reviews") {
        return subresources::review(cluster, &rt, req);
    }
    resource_verb(cluster, &rt, &ns, rp.name.as_deref(), verb, "", req).await
}

fn respond_obj(
    req: &Req,
    rt: &ResourceType,
    code: u16,
    obj: &Value,
    warnings: &[String],
) -> Response<Body> {
    let acc = req.accept();
    if acc.contains("as=Table") {
        let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
        return json_response(
            code,
            &table::table(rt, &[obj], rv, req.q("includeObject").unwrap_or("Metadata")),
            warnings,
        );
    }
    if acc.contains("as=PartialObjectMetadata") {
        return json_response(code, &table::partial(obj), warnings);
    }
    json_response(code, obj, warnings)
}

fn delete_opts(req: &Req) -> ApiResult<DeleteOpts> {
    let b = req.body_value()?;
    Ok(DeleteOpts {
        propagation: req
            .q("propagationPolicy")
            .map(String::from)
            .or_else(|| b["propagationPolicy"].as_str().map(String::from))
            .or_else(|| {
                match b["orphanDependents"]
                    .as_bool()
                    .or(req.q("orphanDependents").map(|s| s == "true"))
                {
                    Some(true) => Some("Orphan".into()),
                    Some(false) => Some("Background".into()),
                    None => None,
                }
            }),
        grace_period: req
            .q("gracePeriodSeconds")
            .and_then(|s| s.parse().ok())
            .or_else(|| b["gracePeriodSeconds"].as_i64()),
        precondition_uid: b["preconditions"]["uid"].as_str().map(String::from),
        precondition_rv: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
        dry_run: req.q("dryRun") == Some("All")
            || b["dryRun"].as_array().is_some_and(|a| !a.is_empty()),
    })
}

async fn resource_verb(
    cluster: &Arc<Cluster>,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: Option<&str>,
    verb: &str,
    sub: &str,
    req: &Req,
) -> ApiResult<Response<Body>> {
    match verb {
        "get" => {
            let o = cluster.get(rt, ns, name.unwrap_or(""))?;
            Ok(respond_obj(req, rt, 200, &o, &[]))
        }
        "list" => list(cluster, rt, ns, req),
        "watch" => watch::serve(cluster.clone(), rt.clone(), ns, name, req),
        "create" => {
            if name.is_some() && sub.is_empty() {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            let body = req.body_value()?;
            check_kind(rt, &body)?;
            let w = cluster.create(rt, ns, body, &req.write_opts(sub))?;
            crate::controllers::crd::after_write(cluster, rt, &w.obj);
            Ok(respond_obj(req, rt, 201, &w.obj, &w.warnings))
        }
        "update" => {
            let body = req.body_value()?;
            check_kind(rt, &body)?;
            let w = cluster.update(rt, ns, name.unwrap_or(""), body, &req.write_opts(sub))?;
            crate::controllers::crd::after_write(cluster, rt, &w.obj);
            Ok(respond_obj(req, rt, 200, &w.obj, &w.warnings))
        }
        "patch" => {
            let ct = req
                .content_type()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let pt = match ct.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" => PatchType::Apply,
                other => {
                    return Err(ApiError::unsupported_media(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{} (got {other:?})",
                        if rt.crd.is_none() {
                            ", application/strategic-merge-patch+json"
                        } else {
                            ""
                        }
                    )));
                }
            };
            let body = req.body_value()?;
            let mut opts = req.write_opts(sub);
            if pt == PatchType::Apply {
                if req.q("fieldManager").is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(
                        "PATCH requests with apply-patch+yaml must specify fieldManager",
                    ));
                }
                check_kind(rt, &body)?;
                if body["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| Some(n) != name)
                {
                    return Err(ApiError::bad_request(
                        "the name of the object does not match the name on the URL",
                    ));
                }
            } else if req.q("force").is_some() {
                return Err(ApiError::bad_request(
                    "force is only allowed for apply patches",
                ));
            }
            opts.force = req.q("force") == Some("true");
            let w = cluster.patch(rt, ns, name.unwrap_or(""), pt, &body, &opts)?;
            crate::controllers::crd::after_write(cluster, rt, &w.obj);
            Ok(respond_obj(
                req,
                rt,
                if w.created && pt == PatchType::Apply {
                    201
                } else {
                    200
                },
                &w.obj,
                &w.warnings,
            ))
        }
        "delete" => {
            let opts = delete_opts(req)?;
            let (o, gone) = cluster.delete(rt, ns, name.unwrap_or(""), &opts)?;
            crate::controllers::crd::after_write(cluster, rt, &o);
            if gone && rt.crd.is_none() && rt.plural == "namespaces" {
                return Ok(json_response(
                    200,
                    &success_status(
                        name.unwrap_or(""),
                        &rt.group,
                        &rt.plural,
                        o["metadata"]["uid"].as_str().unwrap_or(""),
                    ),
                    &[],
                ));
            }
            Ok(respond_obj(req, rt, if gone { 200 } else { 202 }, &o, &[]))
        }
        "deletecollection" => {
            let opts = delete_opts(req)?;
            let labels = LabelSelector::parse(req.q("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(req.q("fieldSelector").unwrap_or(""), &rt.plural)?;
            let (items, rv) = cluster.list(
                rt,
                if rt.namespaced { Some(ns) } else { None },
                &labels,
                &fields,
            );
            let mut deleted = vec![];
            for o in items {
                let n = o["metadata"]["name"].as_str().unwrap_or("");
                let ons = o["metadata"]["namespace"].as_str().unwrap_or("");
                if let Ok((d, _)) = cluster.delete(rt, ons, n, &opts) {
                    deleted.push((*d).clone());
                }
            }
            Ok(json_response(
                200,
                &json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
                &[],
            ))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn check_kind(rt: &ResourceType, body: &Value) -> ApiResult<()> {
    if let Some(k) = body["kind"].as_str()
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            body["apiVersion"].as_str().unwrap_or(""),
            rt.api_version()
        ))
        .tap_kind(k, &rt.kind));
    }
    if let Some(av) = body["apiVersion"].as_str()
        && av != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    Ok(())
}

trait TapKind {
    fn tap_kind(self, got: &str, want: &str) -> Self;
}

impl TapKind for ApiError {
    fn tap_kind(mut self, got: &str, want: &str) -> Self {
        self.message =
            format!("the kind in the data ({got}) does not match the expected kind ({want})");
        self
    }
}

fn list(cluster: &Cluster, rt: &ResourceType, ns: &str, req: &Req) -> ApiResult<Response<Body>> {
    let labels = LabelSelector::parse(req.q("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(req.q("fieldSelector").unwrap_or(""), &rt.plural)?;
    let nsf = if rt.namespaced && !ns.is_empty() {
        Some(ns)
    } else {
        None
    };
    let (items, rv) = cluster.list(rt, nsf, &labels, &fields);
    let limit: usize = req
        .q("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let start_after = match req.q("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            Some(String::from_utf8_lossy(&raw).into_owned())
        }
        None => None,
    };
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    let filtered: Vec<&Arc<Value>> = items
        .iter()
        .filter(|o| start_after.as_ref().is_none_or(|s| key(o) > *s))
        .collect();
    let page: Vec<&Value> = filtered.iter().take(limit).map(|o| o.as_ref()).collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if filtered.len() > page.len()
        && let Some(last) = page.last()
    {
        use base64::Engine;
        meta["continue"] =
            json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key(last)));
        meta["remainingItemCount"] = json!(filtered.len() - page.len());
    }
    let acc = req.accept();
    if acc.contains("as=Table") {
        let mut t = table::table(
            rt,
            &page,
            &rv.to_string(),
            req.q("includeObject").unwrap_or("Metadata"),
        );
        t["metadata"] = meta;
        return Ok(json_response(200, &t, &[]));
    }
    if acc.contains("as=PartialObjectMetadataList") {
        let items: Vec<Value> = page.iter().map(|o| table::partial(o)).collect();
        return Ok(json_response(
            200,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
            &[],
        ));
    }
    let body = json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": meta, "items": page});
    Ok(json_response(200, &body, &[]))
}
