//! The ModelDeployment controller's watches: the caches its reconciles read (Deployments,
//! ReplicaSets, Services, ConfigMaps, pods, LoraAdapters), which of them trigger a reconcile,
//! and the controller run over them.

use super::*;

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let children = || watcher::Config::default().labels(MDEP_LABEL);
    let (deployments, deployments_w) = reflector::store::<Deployment>();
    let (replica_sets, replica_sets_w) = reflector::store::<ReplicaSet>();
    let (services, services_w) = reflector::store::<Service>();
    let (config_maps, config_maps_w) = reflector::store::<ConfigMap>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let (adapters, adapters_w) = reflector::store::<DeserializeGuard<LoraAdapter>>();
    // Caches that trigger nothing (a reconcile's own writes to them would only wake it again):
    // their watches are polled on their own.
    let quiet = futures::stream::select_all([
        cache::reflect(
            replica_sets_w,
            Api::<ReplicaSet>::all(client.clone()),
            children(),
            |_| {},
        )
        .map(|_| ())
        .boxed(),
        cache::reflect(
            services_w,
            Api::<Service>::all(client.clone()),
            children(),
            |_| {},
        )
        .map(|_| ())
        .boxed(),
        cache::reflect(
            config_maps_w,
            Api::<ConfigMap>::all(client.clone()),
            children(),
            |_| {},
        )
        .map(|_| ())
        .boxed(),
    ]);
    tokio::spawn(quiet.for_each(|_| async {}));
    let (c, mds) = controller::new::<ModelDeployment>(client.clone());
    let c = c
        .owns_stream(cache::reflect(
            deployments_w,
            Api::<Deployment>::all(client.clone()),
            children(),
            cache::trim_deployment,
        ))
        // A serving pod becoming ready (or going away) changes what serves.
        .watches_stream(
            cache::reflect(
                pods_w,
                Api::<Pod>::all(client.clone()),
                children(),
                cache::trim_pod,
            ),
            |pod| {
                let ns = pod.namespace().unwrap_or_default();
                pod.labels()
                    .get(MDEP_LABEL)
                    .map(|n| ObjectRef::new(n).within(&ns))
            },
        )
        // A LoraAdapter becoming Ready (its job just finished) is what a waiting deployment
        // needs: look again at once rather than at the next back-off.
        .watches_stream(
            cache::reflect(
                adapters_w,
                Api::<DeserializeGuard<LoraAdapter>>::all(client),
                watcher::Config::default(),
                |_| {},
            ),
            move |la| {
                let ns = la.namespace();
                let name = la.name_any();
                mds.state()
                    .iter()
                    .filter_map(|g| valid(g))
                    .filter(|md| {
                        md.namespace() == ns
                            && md.spec.adapters.iter().any(|a| a.adapter_ref.name == name)
                    })
                    .map(|md| {
                        ObjectRef::new(&md.name_any()).within(&md.namespace().unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
            },
        );
    controller::run(
        c,
        Arc::new(Ctx {
            base: ctx,
            deployments,
            replica_sets,
            services,
            config_maps,
            pods,
            adapters,
            busy: Default::default(),
        }),
    )
    .await;
}
