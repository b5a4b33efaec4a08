//! Watch streams: replay from a resourceVersion (or a synthetic ADDED snapshot), then live
//! events, bookmarks, `410 Expired` for versions older than the retained log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::cluster::Cluster;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{Body, Req, stream_response};
use crate::status::{ApiError, ApiResult};
use crate::store::{Event, EventType};
use crate::table;

struct Filter {
    gr: String,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    name: Option<String>,
}

impl Filter {
    fn matches_obj(&self, o: &Value) -> bool {
        self.labels.matches(&o["metadata"]["labels"])
            && self.fields.matches(o)
            && self
                .name
                .as_ref()
                .is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
    }

    /// The event type this watch reports for `e`, if any: a modification that moves the
    /// object into the selection is ADDED, out of it DELETED.
    fn classify(&self, e: &Event) -> Option<&'static str> {
        if e.gr != self.gr || self.ns.as_ref().is_some_and(|n| *n != e.namespace) {
            return None;
        }
        let now = self.matches_obj(&e.object);
        match e.etype {
            EventType::Modified => {
                let before = e.old.as_ref().is_some_and(|o| self.matches_obj(o));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
            other => now.then_some(other.as_str()),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Json,
    Table,
    Partial,
}

fn line(etype: &str, obj: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": etype, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn render(rt: &ResourceType, fmt: Format, o: &Value) -> Value {
    match fmt {
        Format::Json => o.clone(),
        Format::Partial => table::partial(o),
        Format::Table => {
            let rv = o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            table::table(rt, &[o], &rv, "Metadata")
        }
    }
}

pub fn serve(
    cluster: Arc<Cluster>,
    rt: Arc<ResourceType>,
    ns: &str,
    name: Option<&str>,
    req: &Req,
) -> ApiResult<Response<Body>> {
    let filter = Filter {
        gr: rt.gr(),
        ns: if rt.namespaced && !ns.is_empty() {
            Some(ns.to_string())
        } else {
            None
        },
        labels: LabelSelector::parse(req.q("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(req.q("fieldSelector").unwrap_or(""), &rt.plural)?,
        name: name.map(String::from),
    };
    let accept = req
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let fmt = if accept.contains("as=Table") {
        Format::Table
    } else if accept.contains("as=PartialObjectMetadata") {
        Format::Partial
    } else {
        Format::Json
    };
    let bookmarks = req.q("allowWatchBookmarks") == Some("true");
    let send_initial = req.q("sendInitialEvents") == Some("true");
    let timeout = req
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let rv_param = req.q("resourceVersion").unwrap_or("").to_string();
    let (tx, rx) = mpsc::channel::<Bytes>(1024);

    let mut initial: Vec<Bytes> = vec![];
    let (start, mut last_rv) = if rv_param.is_empty() || rv_param == "0" || send_initial {
        let (items, rv, start) = cluster
            .store
            .snapshot_and_watch(&filter.gr, filter.ns.as_deref());
        for o in items.iter().filter(|o| filter.matches_obj(o)) {
            initial.push(line("ADDED", render(&rt, fmt, o)));
        }
        if send_initial {
            initial.push(line("BOOKMARK", json!({"kind": rt.kind, "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}})));
        }
        (start, rv)
    } else {
        let from: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv_param}")))?;
        match cluster.store.watch_from(from) {
            Ok(s) => (s, from),
            Err(oldest) => {
                let err = ApiError::gone(format!("too old resource version: {from} ({oldest})"));
                initial.push(line("ERROR", err.to_status()));
                let _ = tx.try_send(initial.remove(0));
                drop(tx);
                return Ok(stream_response(rx, "application/json"));
            }
        }
    };
    let mut live = start.rx;
    let backlog = start.backlog;
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        for e in backlog {
            let Some(et) = filter.classify(&e) else {
                continue;
            };
            if e.rv > last_rv {
                last_rv = e.rv;
                if tx
                    .send(line(et, render(&rt, fmt, &e.object)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = cluster.store.current_rv().max(last_rv);
                    let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(line("BOOKMARK", bm)).await.is_err() { return; }
                }
                ev = live.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= last_rv { continue; }
                        let Some(et) = filter.classify(&e) else { continue };
                        last_rv = e.rv;
                        if tx.send(line(et, render(&rt, fmt, &e.object))).await.is_err() { return; }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let err = ApiError::gone(format!("too old resource version: {last_rv}"));
                        let _ = tx.send(line("ERROR", err.to_status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(stream_response(rx, "application/json"))
}
