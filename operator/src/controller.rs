//! The one scaffold every controller runs on.
//!
//! A controller is a [`Reconciler`]: its kind, its name, the caches its reconciles read, and one
//! `reconcile` that reads as observe (caches only) → validate (an invalid spec becomes a
//! condition and an Event, then waits for a change) → build children (pure) → apply → status.
//! Everything around that is here, once: the watch of the kind through a [`DeserializeGuard`]
//! (one object that does not deserialize is reported on itself and never stalls the watcher),
//! the concurrency limit from the operator config, the tracing span, the reconcile metrics, the
//! error policy (transient categories back off, the others wait for a change), the Event for an
//! error, the guard against deciding on a version the last status write replaced, and
//! [`write_status`] (status applied only when it changed, Events for condition
//! transitions).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tailor_api::conditions::{self, DATASET_READY, DEGRADED, READY, SCHEDULED};
use tailor_api::{Dataset, FineTuneJob, LoraAdapter, ModelDeployment};
use tracing::Instrument;

use crate::apply;
use crate::cache;
use crate::context::Context;
use crate::error::{Category, Error, truncate};
use crate::events;

/// A tailor kind a controller reconciles: namespaced, with a status that carries conditions.
pub trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    type Status: Clone + Default + PartialEq + Serialize + Send + Sync;
    /// Condition types whose transitions are published as Events.
    const EVENT_CONDITIONS: &'static [&'static str];
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
}

macro_rules! kind {
    ($k:ty, $s:ty, [$($c:expr),*]) => {
        impl Kind for $k {
            type Status = $s;
            const EVENT_CONDITIONS: &'static [&'static str] = &[$($c),*];
            fn status(&self) -> Option<&$s> {
                self.status.as_ref()
            }
            fn conditions(status: &$s) -> &[Condition] {
                &status.conditions
            }
        }
    };
}

kind!(Dataset, tailor_api::DatasetStatus, [READY, DEGRADED]);
kind!(
    FineTuneJob,
    tailor_api::FineTuneJobStatus,
    [READY, DEGRADED, DATASET_READY, SCHEDULED]
);
kind!(
    LoraAdapter,
    tailor_api::LoraAdapterStatus,
    [READY, DEGRADED]
);
kind!(
    ModelDeployment,
    tailor_api::ModelDeploymentStatus,
    [READY, DEGRADED]
);

/// One controller: what it reconciles and how.
pub trait Reconciler: Send + Sync + 'static {
    type K: Kind;
    /// The controller's name: metrics label, logs, back-off keys.
    const NAME: &'static str;
    fn context(&self) -> &Context;
    /// Whether every cache the reconciles read has finished its first list. The main store is
    /// ready before the first reconcile; the others may still be listing, and a reconcile that
    /// awaited them could hold every slot while the watch that fills them goes unpolled.
    fn caches_ready(&self) -> bool {
        true
    }
    fn reconcile(&self, obj: &Self::K) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// The watch of a controller's own kind, through a [`DeserializeGuard`], feeding `store`'s
/// writer: the `for_stream` of its [`Controller`].
pub fn watch_main<K: Kind>(
    client: kube::Client,
) -> (
    Store<DeserializeGuard<K>>,
    impl Stream<Item = Result<DeserializeGuard<K>, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store::<DeserializeGuard<K>>();
    let stream = cache::reflect_main(
        writer,
        Api::<DeserializeGuard<K>>::all(client),
        watcher::Config::default().any_semantic(),
    );
    (store, stream)
}

/// A controller for `R::K` over its main watch; add `owns_stream`/`watches_stream` and pass it
/// to [`run`].
pub fn new<K: Kind>(
    client: kube::Client,
) -> (Controller<DeserializeGuard<K>>, Store<DeserializeGuard<K>>) {
    let (store, main) = watch_main::<K>(client);
    (Controller::for_stream(main, store.clone()), store)
}

/// Runs `controller` until shutdown with `r`'s reconcile.
pub async fn run<R: Reconciler>(controller: Controller<DeserializeGuard<R::K>>, r: Arc<R>) {
    let concurrency = r.context().config.max_concurrent_reconciles;
    controller
        .with_config(controller::Config::default().concurrency(concurrency))
        .shutdown_on_signal()
        .run(reconcile::<R>, error_policy::<R>, r)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(controller = R::NAME, error = %e, "reconcile failed");
            }
        })
        .await;
}

fn key<R: Reconciler>(obj: &DeserializeGuard<R::K>) -> String {
    format!(
        "{}/{}/{}",
        R::NAME,
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

fn error_policy<R: Reconciler>(obj: Arc<DeserializeGuard<R::K>>, err: &Error, r: Arc<R>) -> Action {
    if err.category().is_transient() {
        Action::requeue(r.context().backoff(&key::<R>(&obj)))
    } else {
        Action::await_change()
    }
}

async fn reconcile<R: Reconciler>(
    obj: Arc<DeserializeGuard<R::K>>,
    r: Arc<R>,
) -> Result<Action, Error> {
    if !r.caches_ready() {
        return Ok(Action::requeue(cache::NOT_READY_RETRY));
    }
    let ctx = r.context();
    if let (Some(uid), Some(rv)) = (obj.uid(), obj.resource_version())
        && ctx.is_stale(&uid, &rv)
    {
        // The cache still holds the version the last reconcile replaced; its watch event is
        // on the way and triggers the next reconcile.
        return Ok(Action::requeue(cache::NOT_READY_RETRY));
    }
    let _timer = ctx.metrics.reconcile(R::NAME);
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let span =
        tracing::info_span!("reconcile", controller = R::NAME, namespace = %ns, resource = %name);
    let result = match &obj.0 {
        Ok(k) => r.reconcile(k).instrument(span).await,
        Err(invalid) => {
            malformed::<R::K>(ctx, R::NAME, invalid)
                .instrument(span)
                .await
        }
    };
    match &result {
        Ok(_) => ctx.succeeded(&key::<R>(&obj)),
        Err(e) => {
            tracing::warn!(controller = R::NAME, namespace = %ns, resource = %name, category = %e.category(), error = %e.chain(), "reconcile error");
            ctx.metrics.error(R::NAME, e.category());
            events::publish_error(ctx, &obj.object_ref(&()), e);
        }
    }
    result
}

/// An object that does not deserialize (stored before a schema change, or written around
/// admission): Ready=False and Degraded=True with reason InvalidSpec naming the problem, an
/// Event, and nothing else until it changes.
async fn malformed<K: Kind>(
    ctx: &Context,
    controller: &str,
    invalid: &InvalidObject,
) -> Result<Action, Error> {
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let ns = invalid.metadata.namespace.clone().unwrap_or_default();
    let message = truncate(
        &format!(
            "this {} could not be read by the operator: {}; fix the object (kubectl edit) or recreate it",
            K::kind(&()),
            invalid.error
        ),
        1000,
    );
    tracing::warn!(controller, namespace = %ns, resource = %name, error = %invalid.error, "object does not deserialize");
    ctx.metrics.error(controller, Category::InvalidSpec);
    let generation = invalid.metadata.generation;
    let now = Timestamp::now();
    let mut conds = vec![];
    for (t, s) in [(READY, false), (DEGRADED, true)] {
        conditions::set(
            &mut conds,
            conditions::new(
                t,
                Some(s),
                Category::InvalidSpec.as_str(),
                &message,
                generation,
            ),
            now,
        );
    }
    let status = serde_json::json!({"observedGeneration": generation, "conditions": conds});
    // Through the guard: the answer is the same unreadable object.
    let api = Api::<DeserializeGuard<K>>::namespaced(ctx.client.clone(), &ns);
    apply::apply_status(&api, &name, &status).await?;
    let obj = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(name),
        namespace: Some(ns),
        uid: invalid.metadata.uid.clone(),
        resource_version: invalid.metadata.resource_version.clone(),
        ..Default::default()
    };
    events::publish(
        ctx,
        &obj,
        kube::runtime::events::EventType::Warning,
        Category::InvalidSpec.as_str(),
        &message,
        "Reconcile",
    );
    Ok(Action::await_change())
}

/// Applies `st` as the status of `obj` when it differs from what `obj` has, and publishes the
/// transitions of [`Kind::EVENT_CONDITIONS`] as Events. Returns whether it wrote. The version
/// it replaced is remembered: reconciles skip it while the cache still holds it.
pub async fn write_status<K: Kind>(ctx: &Context, obj: &K, st: &K::Status) -> Result<bool, Error> {
    let prev = obj.status().cloned().unwrap_or_default();
    if prev == *st {
        return Ok(false);
    }
    let api = Api::<K>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let after = apply::apply_status(&api, &obj.name_any(), st).await?;
    if let (Some(uid), Some(before), Some(after)) =
        (obj.uid(), obj.resource_version(), after.as_deref())
    {
        ctx.wrote_status(&uid, &before, after);
    }
    events::publish_transitions(
        ctx,
        &obj.object_ref(&()),
        K::conditions(&prev),
        K::conditions(st),
        K::EVENT_CONDITIONS,
    );
    Ok(true)
}

/// The valid object of a guarded cache entry.
pub fn valid<K: Clone>(g: &DeserializeGuard<K>) -> Option<&K> {
    g.0.as_ref().ok()
}
