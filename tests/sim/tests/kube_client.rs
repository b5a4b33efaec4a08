//! tailor-sim driven by kube-rs: typed and dynamic clients, watcher (with a re-list after
//! 410 Gone), a Controller, admission errors as `Status`, and 1,000 objects under 5 watchers.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Sim, wait_for};
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{Controller, WatchStreamExt, controller::Action, watcher};
use serde_json::json;

const WIDGET_CRD: &str = include_str!("fixtures/widget-crd.yaml");

async fn client(sim: &Sim) -> kube::Client {
    // Both ring and aws-lc-rs end up enabled in the workspace, so rustls cannot pick a default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(&sim.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn widgets(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.tailor.dev", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn widget(name: &str, size: i64) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.tailor.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size, "uri": "file:///w"}}))
        .expect("widget")
}

fn install(sim: &Sim) {
    sim.apply(WIDGET_CRD);
    sim.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=120s",
        "crd/widgets.example.tailor.dev",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_and_controller_survive_a_410_relist() {
    let mut sim = Sim::start(&[]);
    install(&sim);
    let c = client(&sim).await;
    let api = widgets(&c, "default");
    // Typed clients work too.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::default_namespaced(c.clone());
    assert!(
        pods.list(&ListParams::default())
            .await
            .expect("list pods")
            .items
            .is_empty()
    );
    // Admission failures are apiserver Statuses with causes.
    let err = api
        .create(&PostParams::default(), &widget("bad", 0))
        .await
        .expect_err("size 0 is invalid");
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(
                s.message
                    .contains("Widget.example.tailor.dev \"bad\" is invalid: spec.size"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // A watch from a compacted version answers 410 Gone.
    api.create(&PostParams::default(), &widget("w1", 1))
        .await
        .expect("create w1");
    // Watcher: remember every name it sees.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let s2 = seen.clone();
    let wapi = api.clone();
    tokio::spawn(async move {
        let mut stream = watcher(wapi, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(o) = ev {
                s2.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(o.metadata.name.clone().unwrap_or_default());
            }
        }
    });
    // Controller: marks every widget Reconciled in its status.
    let capi = api.clone();
    tokio::spawn(async move {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.tailor.dev", "v1", "Widget"),
            "widgets",
        );
        Controller::new_with(capi.clone(), watcher::Config::default(), ar)
            .run(
                move |w: Arc<DynamicObject>, api: Arc<Api<DynamicObject>>| async move {
                    let name = w.metadata.name.clone().unwrap_or_default();
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"phase": "Reconciled"}})),
                    )
                    .await?;
                    Ok::<_, kube::Error>(Action::await_change())
                },
                |_, _, _| Action::requeue(Duration::from_millis(500)),
                Arc::new(capi),
            )
            .for_each(|_| async {})
            .await;
    });
    let seen_w = |n: &str| seen.lock().unwrap_or_else(|e| e.into_inner()).contains(n);
    tokio::task::block_in_place(|| {
        wait_for("the watcher to see w1", Duration::from_secs(90), || {
            seen_w("w1").then_some(())
        })
    });
    let phase = |sim: &Sim, n: &str| sim.jsonpath(&["get", "widget", n], "{.status.phase}");
    let s = &sim;
    wait_for(
        "controller to reconcile w1",
        Duration::from_secs(90),
        || (phase(s, "w1") == "Reconciled").then_some(()),
    );
    // Restart the simulator: its watch log starts empty, so every client's resume version is
    // too old. The watcher and the controller must get 410, re-list and carry on.
    let rv = api
        .get("w1")
        .await
        .expect("w1")
        .metadata
        .resource_version
        .unwrap_or_default();
    sim.restart();
    let mut gone = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), gone.try_next())
        .await
        .expect("watch answered");
    match first {
        Ok(Some(WatchEvent::Error(s))) => assert_eq!(s.code, 410, "{s:?}"),
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    api.create(&PostParams::default(), &widget("w2", 2))
        .await
        .expect("create w2");
    tokio::task::block_in_place(|| {
        wait_for(
            "the watcher to re-list after 410 and see w2",
            Duration::from_secs(120),
            || seen_w("w2").then_some(()),
        )
    });
    let s = &sim;
    wait_for(
        "controller to reconcile w2",
        Duration::from_secs(60),
        || (phase(s, "w2") == "Reconciled").then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_objects_with_five_watchers_list_and_watch_correctly() {
    let sim = Sim::start(&[]);
    install(&sim);
    let c = client(&sim).await;
    let api = widgets(&c, "default");
    let n = 1000usize;
    let mut counters = vec![];
    for _ in 0..5 {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let s2 = seen.clone();
        let wapi = api.clone();
        tokio::spawn(async move {
            let mut stream = watcher(wapi, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(o) = ev {
                    s2.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(o.metadata.name.clone().unwrap_or_default());
                }
            }
        });
        counters.push(seen);
    }
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &widget(&format!("w{i:04}"), (i % 100 + 1) as i64),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("create 1000 widgets");
    tokio::task::block_in_place(|| {
        wait_for(
            "every watcher to see every object",
            Duration::from_secs(180),
            || {
                counters
                    .iter()
                    .all(|c| c.lock().unwrap_or_else(|e| e.into_inner()).len() == n)
                    .then_some(())
            },
        )
    });
    for (i, c) in counters.iter().enumerate() {
        assert_eq!(
            c.lock().unwrap_or_else(|e| e.into_inner()).len(),
            n,
            "watcher {i} saw every object"
        );
    }
    // Paginated list returns each object exactly once.
    let mut names = BTreeSet::new();
    let mut lp = ListParams::default().limit(100);
    let mut pages = 0;
    loop {
        let page = api.list(&lp).await.expect("list page");
        pages += 1;
        for o in &page.items {
            assert!(
                names.insert(o.metadata.name.clone().unwrap_or_default()),
                "duplicate in pagination"
            );
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(cont) => lp = lp.continue_token(&cont),
            None => break,
        }
    }
    assert_eq!((names.len(), pages), (n, 10));
    // Label and field selection.
    let one = api
        .list(&ListParams::default().fields("metadata.name=w0042"))
        .await
        .expect("field selector");
    assert_eq!(one.items.len(), 1);
    let table = sim.ok(&["get", "widgets", "--no-headers"]);
    assert_eq!(table.lines().count(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_events_show_up_in_kubectl_get_events() {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let sim = Sim::start(&[]);
    let c = client(&sim).await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(c.clone());
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "subject"}, "data": {"a": "b"}}))
            .expect("cm");
    let cm = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    let recorder = Recorder::new(
        c.clone(),
        Reporter {
            controller: "tailor-test".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "DatasetNotFound".into(),
        note: Some("dataset \"d\" not found".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &cm.object_ref(&()))
        .await
        .expect("publish");
    recorder
        .publish(&ev, &cm.object_ref(&()))
        .await
        .expect("publish again");
    let s = &sim;
    let line = wait_for("core/v1 view of the event", Duration::from_secs(60), || {
        let out = s.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=subject",
        ]);
        out.lines()
            .find(|l| l.contains("DatasetNotFound"))
            .map(String::from)
    });
    assert!(
        line.contains("Warning")
            && line.contains("configmap/subject")
            && line.contains("dataset \"d\" not found"),
        "{line}"
    );
    let count = sim.jsonpath(
        &[
            "get",
            "events",
            "--field-selector",
            "reason=DatasetNotFound",
        ],
        "{.items[0].count}",
    );
    assert_eq!(count, "2", "the series count is the core count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_watch_reports_objects_leaving_and_entering_as_deleted_and_added() {
    let sim = Sim::start(&[]);
    let c = client(&sim).await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(c.clone());
    let mk = |team: &str| -> k8s_openapi::api::core::v1::ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "moving", "labels": {"team": team}}}))
            .expect("cm")
    };
    let created = cms
        .create(&PostParams::default(), &mk("a"))
        .await
        .expect("create");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let mut events = cms
        .watch(&WatchParams::default().labels("team=a"), &rv)
        .await
        .expect("watch")
        .boxed();
    let relabel = |team: &'static str| {
        let cms = cms.clone();
        async move {
            cms.patch(
                "moving",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"team": team}}})),
            )
            .await
            .expect("relabel");
        }
    };
    relabel("b").await;
    relabel("a").await;
    let mut kinds = vec![];
    while kinds.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(60), events.try_next())
            .await
            .expect("event in time")
            .expect("watch ok");
        match ev {
            Some(WatchEvent::Deleted(_)) => kinds.push("DELETED"),
            Some(WatchEvent::Added(_)) => kinds.push("ADDED"),
            Some(WatchEvent::Modified(_)) => kinds.push("MODIFIED"),
            Some(WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(e)) => panic!("watch error {e:?}"),
            None => break,
        }
    }
    assert_eq!(kinds, vec!["DELETED", "ADDED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_apply_removes_the_fields_a_manager_stops_applying() {
    let sim = Sim::start(&[]);
    install(&sim);
    let c = client(&sim).await;
    let api = widgets(&c, "default");
    api.create(&PostParams::default(), &widget("s", 1))
        .await
        .expect("create");
    let pp = PatchParams::apply("tester");
    let apply = |status: serde_json::Value| {
        let api = api.clone();
        let pp = pp.clone();
        async move {
            api.patch_status(
                "s",
                &pp,
                &Patch::Apply(json!({"apiVersion": "example.tailor.dev/v1", "kind": "Widget", "status": status})),
            )
            .await
            .expect("status apply")
        }
    };
    apply(json!({"phase": "Rolling", "conditions": [{"type": "Ready", "status": "False"}]})).await;
    // As in Kubernetes: the manager no longer applies `conditions`, so they go.
    let w = apply(json!({"phase": "Done"})).await;
    assert_eq!(w.data["status"], json!({"phase": "Done"}));
    let entry = w
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("tester"))
        .expect("a managedFields entry for the status applier");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    // A later apply of the spec by another manager leaves the status alone.
    let w = api
        .patch(
            "s",
            &PatchParams::apply("spec-owner").force(),
            &Patch::Apply(json!({"apiVersion": "example.tailor.dev/v1", "kind": "Widget", "metadata": {"name": "s"}, "spec": {"size": 2, "uri": "file:///w"}})),
        )
        .await
        .expect("spec apply");
    assert_eq!(w.data["status"], json!({"phase": "Done"}));
}
