//! Reflector caches: what reconciles read instead of asking the API server.
//!
//! Each controller feeds its watches through [`reflect`], so the store is updated *before* the
//! controller sees the trigger: a reconcile started by a Job or pod event reads that event's
//! object from the cache. Managed fields are dropped on the way in (the operator never reads
//! them; they are often the largest part of an object).
//!
//! A reconcile that creates a child and is triggered again before the child's watch event
//! arrives finds no child in the cache and applies it again: server-side apply of the same
//! object is a no-op, and child names are hashes of their content, so that race is harmless.

use std::fmt::Debug;
use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// The watch behind every cache: default back-off, managed fields dropped (the operator never
/// reads them; they are often the largest part of an object), then `trim`.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(move |o: &mut K| {
            o.managed_fields_mut().clear();
            trim(o);
        })
}

/// A watch of `api` that keeps `writer`'s store current; yields every object touched (applied
/// or deleted), for a controller's `owns_stream`/`watches_stream`. `trim` drops what the
/// reconciles never read before the object is stored.
pub fn reflect<K>(
    writer: Writer<K>,
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflector::reflector(writer, watch(api, config, trim)).touched_objects()
}

/// Like [`reflect`], for a controller's own kind (`for_stream`): only applied objects, kept
/// whole but for managed fields.
pub fn reflect_main<K>(
    writer: Writer<K>,
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflector::reflector(writer, watch(api, config, |_| {})).applied_objects()
}

/// A Job as its owner's reconcile reads it: metadata, `suspend` and status. The pod template
/// (containers, volumes, config) is most of a Job and is only ever written.
pub fn trim_job(job: &mut Job) {
    if let Some(spec) = job.spec.as_mut() {
        spec.template = Default::default();
        spec.selector = None;
    }
}

/// A Deployment as reconciles read it: metadata and status (the pod template is only written).
pub fn trim_deployment(d: &mut k8s_openapi::api::apps::v1::Deployment) {
    d.spec.template = Default::default();
}

/// A pod as reconciles read it: metadata and status.
pub fn trim_pod(pod: &mut Pod) {
    pod.spec = None;
}

/// Whether `store` has finished its first list. Reconciles check this and requeue rather than
/// await it: the controller polls its watches only while it has room for more work, so
/// reconciles waiting for a child store's first list can hold every slot while the watch that
/// would fill that store goes unpolled (seen after an operator restart: nothing reconciled).
pub fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    use futures::FutureExt;
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// How soon a reconcile that found a cache still listing looks again.
pub const NOT_READY_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// The cached object `name` in `ns`.
pub fn get<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(ns))
}

/// The cached pods of `ns` whose label `key` is `value`.
pub fn pods_labelled(store: &Store<Pod>, ns: &str, key: &str, value: &str) -> Vec<Pod> {
    store
        .state_filter(|p| {
            p.namespace().as_deref() == Some(ns)
                && p.labels().get(key).map(String::as_str) == Some(value)
        })
        .into_iter()
        .map(|p| (*p).clone())
        .collect()
}
