//! Unit tests of the ModelDeployment builders (this module's parent and its `server`, `router`
//! and `policies` submodules, with the serving engines of `runtime`): the children built from
//! the quickstart example, checked field by field.
//!
//! Size (over 700 lines, on purpose): one suite of one pure builder sharing one fixture (the
//! quickstart ModelDeployment, the operator config, the adapter and revision helpers); several
//! cases check the server and router children against each other (the token one sends and the
//! other requires, backends, ports), so split by child they would each repeat the fixture.

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use serde_json::Value;
use tailor_api::ModelDeployment;

use super::*;
use crate::config::OperatorConfig;
use crate::modeldeployment::revision::ResolvedAdapter;

fn md() -> ModelDeployment {
    let text = std::fs::read_to_string(
        Path::new(
            &std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)"),
        )
        .join("../examples/quickstart/modeldeployment.yaml"),
    )
    .expect("quickstart");
    let mut md: ModelDeployment = serde_saphyr::from_str(&text).expect("typed");
    md.metadata.namespace = Some("tailor-demo".into());
    md.metadata.uid = Some("0c0c0c0c-uid".into());
    md
}

fn cfg() -> OperatorConfig {
    serde_json::from_value(serde_json::json!({
        "trainerImage": "tailor-trainer:test",
        "serverImage": "tailor-server:test",
        "routerImage": "tailor-router:test",
        "artifactsMount": "/artifacts",
        "artifactsClaim": "tailor-artifacts"
    }))
    .expect("config")
}

fn adapter(served: &str, name: &str) -> ResolvedAdapter {
    ResolvedAdapter {
        served_name: served.into(),
        adapter: name.into(),
        uri: format!("pvc://tailor-artifacts/adapters/{name}"),
        sha256: None,
        rank: Some(8),
        credentials: None,
        validation_loss: None,
        base_validation_loss: None,
        evaluation: None,
    }
}

fn revision(md: &ModelDeployment, adapters: Vec<ResolvedAdapter>) -> RevisionSpec {
    RevisionSpec::new(&md.spec, adapters)
}

/// The Secret a container takes its environment from.
fn env_secret(c: &Container) -> Option<&str> {
    c.env_from
        .iter()
        .flatten()
        .find_map(|e| e.secret_ref.as_ref())
        .map(|s| s.name.as_str())
}

fn container(d: &Deployment) -> &Container {
    &d.spec.template.spec.as_ref().expect("pod").containers[0]
}

/// Parses and validates a router config with the router's own code.
fn router_accepts(config: &RouterConfig) -> tailor_router::config::RouterConfig {
    let text = serde_json::to_string_pretty(config).expect("json");
    tailor_router::config::FileConfig::parse(&text)
        .and_then(|f| f.validate(Path::new("/")))
        .unwrap_or_else(|e| panic!("router rejects the config: {e}\n{text}"))
}

#[test]
fn server_deployment_runs_the_pod_revision_with_gpus_probes_and_its_config() {
    let md = md();
    let rev = revision(&md, vec![adapter("support", "support-v1")]);
    let cm = serving_name("support", &rev.pod_revision());
    let vols = serving_volumes(
        &cfg(),
        "tailor-demo",
        &cm,
        &rev.pods,
        &BTreeMap::from([(
            "support-v1".to_string(),
            "pvc://tailor-artifacts/adapters/support-v1".to_string(),
        )]),
    )
    .expect("volumes");
    assert_eq!(vols.base_path, "/artifacts/models/base");
    assert_eq!(
        vols.adapters["support-v1"],
        "/artifacts/adapters/support-v1"
    );
    let d = server_deployment(&md, &rev, &vols, &cfg(), md.spec.replicas);
    crate::pods::assert_hardened(d.spec.template.spec.as_ref().expect("pod"));
    assert_eq!(d.metadata.name.as_deref(), Some(cm.as_str()));
    assert_eq!(
        d.metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].kind.as_str()),
        Some("ModelDeployment")
    );
    let spec = &d.spec;
    assert_eq!(spec.replicas, Some(2));
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("tailor-server:test"));
    let args = c.args.clone().unwrap_or_default();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("{flag} missing: {args:?}"))
    };
    assert_eq!(arg("--model"), "/artifacts/models/base");
    assert_eq!(arg("--served-model-name"), "base");
    assert_eq!(arg("--listen"), "$(POD_IP):8000");
    assert_eq!(arg("--max-batch-size"), "16");
    assert_eq!(arg("--max-loaded-adapters"), "4");
    assert_eq!(arg("--config"), "/etc/tailor/server.json");
    let env = c.env.as_ref().expect("env");
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.podIP")
    );
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref()),
        Some("/ready")
    );
    // The pod template carries the selector's labels, and the Service selects them.
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    let svc = server_service(&md, &rev.pod_revision());
    for (k, v) in svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector")
    {
        assert_eq!(pod_labels.get(&k), Some(&v), "{k}");
    }
    for (k, v) in spec.selector.match_labels.clone().expect("match labels") {
        assert_eq!(pod_labels.get(&k), Some(&v), "{k}");
    }
    // What the ServiceMonitors in manifests/monitoring select on.
    assert_eq!(pod_labels["app.kubernetes.io/name"], "tailor-server");
    assert_eq!(pod_labels[MDEP_LABEL], "support");
    assert_eq!(pod_labels[REVISION_LABEL], rev.pod_revision());
    let svc_labels = svc.metadata.labels.clone().expect("service labels");
    assert_eq!(
        svc_labels["app.kubernetes.io/managed-by"],
        "tailor-operator"
    );
    assert_eq!(svc_labels["app.kubernetes.io/name"], "tailor-server");
}

#[test]
fn a_base_model_in_a_bucket_is_fetched_before_the_server_starts() {
    let mut md = md();
    md.spec.base_model.uri = "s3://bucket/models/base".into();
    md.spec.base_model.credentials_secret_ref = Some(tailor_api::LocalRef {
        name: "s3-creds".into(),
    });
    let rev = revision(&md, vec![]);
    let vols =
        serving_volumes(&cfg(), "tailor-demo", "cm", &rev.pods, &BTreeMap::new()).expect("volumes");
    assert_eq!(vols.base_path, "/inputs/0");
    let d = server_deployment(&md, &rev, &vols, &cfg(), md.spec.replicas);
    let pod = d.spec.template.spec.expect("pod spec");
    crate::pods::assert_hardened(&pod);
    let init = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(init.len(), 1, "{init:?}");
    let fetch = &init[0];
    assert_eq!(fetch.image.as_deref(), Some(cfg().fetch_image.as_str()));
    let args = fetch.args.clone().unwrap_or_default();
    assert_eq!(args[..2], ["s3://bucket/models/base", "/inputs/0"]);
    assert_eq!(env_secret(fetch), Some("s3-creds"));
    // The server reads what the fetch wrote, and never sees the credentials.
    let server = &pod.containers[0];
    assert!(server.env_from.is_none());
    let inputs = server
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/inputs")
        .expect("inputs mounted");
    assert_eq!(inputs.read_only, Some(true));
    // Another Secret is another pod revision (the fetch must run again).
    let mut md2 = md.clone();
    md2.spec.base_model.credentials_secret_ref = Some(tailor_api::LocalRef {
        name: "other".into(),
    });
    assert_ne!(revision(&md2, vec![]).pod_revision(), rev.pod_revision());
}

#[test]
fn adapters_in_a_bucket_are_fetched_by_the_servers_with_the_adapters_secret() {
    let mut remote = adapter("support", "support-v1");
    remote.uri = "s3://bucket/adapters/support-v1".into();
    remote.credentials = Some("s3-creds".into());
    let plain = revision(&md(), vec![adapter("support", "support-v1")]);
    let rev = revision(&md(), vec![remote.clone()]);
    // The servers' Secret is part of what the pods run.
    assert_eq!(rev.pods.adapter_credentials.as_deref(), Some("s3-creds"));
    assert_ne!(rev.pod_revision(), plain.pod_revision());
    let uris = BTreeMap::from([(remote.adapter.clone(), remote.uri.clone())]);
    let vols = serving_volumes(&cfg(), "tailor-demo", "cm", &rev.pods, &uris).expect("volumes");
    // No volume for it: the server's config names the URI, and the server fetches it.
    assert_eq!(
        vols.adapters["support-v1"],
        "s3://bucket/adapters/support-v1"
    );
    let d = server_deployment(&md(), &rev, &vols, &cfg(), 1);
    let pod = d.spec.template.spec.expect("pod spec");
    crate::pods::assert_hardened(&pod);
    assert!(pod.init_containers.is_none());
    let server = &pod.containers[0];
    assert_eq!(env_secret(server), Some("s3-creds"));
    let prefixes = server
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TAILOR_SERVER_ADAPTER_URI_PREFIXES")
        .and_then(|e| e.value.clone())
        .expect("prefixes");
    assert!(!prefixes.contains("https"), "{prefixes}");
    // Without fetched adapters the server holds no credentials.
    let vols = serving_volumes(&cfg(), "tailor-demo", "cm", &plain.pods, &BTreeMap::new())
        .expect("volumes");
    let d = server_deployment(&md(), &plain, &vols, &cfg(), 1);
    assert!(container(&d).env_from.is_none());
}

/// The value after `flag` in `args` (`--flag value`), if any.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[test]
fn runtime_vllm_renders_vllm_serve_with_its_documented_flags_and_environment() {
    let mut md = md();
    md.spec.runtime = tailor_api::Runtime::Vllm;
    md.spec.resources.gpus = 4;
    md.spec.server.dtype = tailor_api::Dtype::Bfloat16;
    md.spec.server.extra_args = vec!["--enable-prefix-caching".into()];
    let mut big = adapter("support", "support-v2");
    big.rank = Some(48);
    let rev = revision(&md, vec![adapter("faq", "faq-v1"), big]);
    let uris = BTreeMap::from([
        (
            "faq-v1".to_string(),
            "pvc://tailor-artifacts/adapters/faq-v1".to_string(),
        ),
        (
            "support-v2".to_string(),
            "pvc://tailor-artifacts/adapters/support-v2".to_string(),
        ),
    ]);
    let vols = serving_volumes(&cfg(), "tailor-demo", "cm", &rev.pods, &uris).expect("volumes");
    let d = server_deployment(&md, &rev, &vols, &cfg(), 2);
    let pod = d.spec.template.spec.clone().expect("pod");
    crate::pods::assert_hardened(&pod);
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some(crate::config::VLLM_IMAGE));
    assert_eq!(c.command.clone().unwrap_or_default(), ["vllm", "serve"]);
    let args = c.args.clone().unwrap_or_default();
    // `vllm serve MODEL`: the model is the positional argument.
    assert_eq!(args[0], "/artifacts/models/base");
    let f = |flag: &str| flag_value(&args, flag).unwrap_or_else(|| panic!("{flag}: {args:?}"));
    assert_eq!(f("--served-model-name"), "base");
    assert_eq!(f("--host"), "$(POD_IP)");
    assert_eq!(f("--port"), "8000");
    assert!(args.iter().any(|a| a == "--enable-lora"), "{args:?}");
    assert_eq!(f("--max-loras"), "4");
    // The smallest of vLLM's ranks that holds rank 48.
    assert_eq!(f("--max-lora-rank"), "64");
    assert_eq!(f("--tensor-parallel-size"), "4");
    assert_eq!(f("--max-model-len"), "2048");
    assert_eq!(f("--max-num-seqs"), "16");
    assert_eq!(f("--dtype"), "bfloat16");
    assert_eq!(
        args.last().map(String::as_str),
        Some("--enable-prefix-caching")
    );
    // No tailor-server flag reaches vLLM (its argparse would refuse it).
    for tailor_only in [
        "--listen",
        "--config",
        "--api-key-file",
        "--max-loaded-adapters",
    ] {
        assert!(
            !args.iter().any(|a| a == tailor_only),
            "{tailor_only} in {args:?}"
        );
    }
    let env = c.env.clone().unwrap_or_default();
    let var = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(
        var("VLLM_ALLOW_RUNTIME_LORA_UPDATING").value.as_deref(),
        Some("True")
    );
    let key = var("VLLM_API_KEY")
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("key from the token Secret");
    assert_eq!(key.name, token_secret_name("support"));
    assert_eq!(key.key, TOKEN_KEY);
    assert_eq!(var("HF_HUB_OFFLINE").value.as_deref(), Some("1"));
    assert_eq!(
        var("HOME").value.as_deref(),
        Some("/tmp"),
        "a writable HOME"
    );
    // Probes on vLLM's /health, liveness and readiness held by a long startup probe.
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    for p in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe] {
        assert_eq!(path(p).as_deref(), Some("/health"));
    }
    let startup = c.startup_probe.as_ref().expect("startup");
    assert!(startup.period_seconds.unwrap_or(0) * startup.failure_threshold.unwrap_or(0) >= 1800);
    // Shared memory for the tensor-parallel workers.
    let shm = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "shm")
        .and_then(|v| v.empty_dir.clone())
        .expect("shm volume");
    assert_eq!(shm.medium.as_deref(), Some("Memory"));
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "shm" && m.mount_path == "/dev/shm")
    );
    assert_eq!(
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits")["nvidia.com/gpu"]
            .0,
        "4"
    );
    // The image is the spec's when it names one.
    md.spec.server.image = Some("registry.local/vllm-openai:v0.12.0".into());
    let rev2 = revision(&md, rev.adapters.clone());
    assert_ne!(
        rev2.pod_revision(),
        rev.pod_revision(),
        "another image is another pod"
    );
    let d = server_deployment(&md, &rev2, &vols, &cfg(), 2);
    assert_eq!(
        container(&d).image.as_deref(),
        Some("registry.local/vllm-openai:v0.12.0")
    );
}

#[test]
fn the_runtime_is_part_of_the_pods_and_small_ranks_share_them() {
    let md = md();
    let tailor = revision(&md, vec![adapter("support", "support-v1")]);
    let mut vmd = md.clone();
    vmd.spec.runtime = tailor_api::Runtime::Vllm;
    let v8 = revision(&vmd, vec![adapter("support", "support-v1")]);
    assert_ne!(v8.pod_revision(), tailor.pod_revision());
    assert_eq!(tailor.pods.max_lora_rank, None);
    assert_eq!(v8.pods.max_lora_rank, Some(16));
    // An adapter canary from rank 8 to 16 stays on the pods; to rank 32 it needs new ones.
    let mut r16 = adapter("support", "support-v2");
    r16.rank = Some(16);
    assert_eq!(
        revision(&vmd, vec![r16.clone()]).pod_revision(),
        v8.pod_revision()
    );
    r16.rank = Some(32);
    assert_ne!(revision(&vmd, vec![r16]).pod_revision(), v8.pod_revision());
}

#[test]
fn specs_a_runtime_cannot_run_are_refused_naming_the_field() {
    use crate::modeldeployment::runtime::check;
    let mut md = md();
    md.spec.server.extra_args = vec!["--threads=4".into(), "--listen=0.0.0.0:1".into()];
    let e = check(&revision(&md, vec![])).expect_err("managed flag");
    assert!(
        e.starts_with("spec.server.extraArgs[1] \"--listen=0.0.0.0:1\""),
        "{e}"
    );
    md.spec.runtime = tailor_api::Runtime::Vllm;
    md.spec.server.extra_args = vec!["--max-model-len".into(), "4096".into()];
    let e = check(&revision(&md, vec![])).expect_err("managed flag");
    assert!(e.contains("spec.server.maxSeqLength"), "{e}");
    md.spec.server.extra_args = vec!["--enable-prefix-caching".into()];
    check(&revision(&md, vec![adapter("support", "support-v1")])).expect("runs");
    let mut remote = adapter("support", "support-v2");
    remote.uri = "s3://bucket/adapters/support-v2".into();
    let e = check(&revision(&md, vec![remote])).expect_err("vLLM fetches no bucket");
    assert!(
        e.contains("s3://bucket/adapters/support-v2") && e.contains("runtime tailor"),
        "{e}"
    );
    let mut huge = adapter("support", "support-v3");
    huge.rank = Some(1024);
    let e = check(&revision(&md, vec![huge])).expect_err("rank");
    assert!(e.contains("rank 1024") && e.contains("512"), "{e}");
}

#[test]
fn server_config_lists_adapters_and_only_test_fault_injection_when_annotated() {
    let mut md = md();
    let rev = revision(&md, vec![adapter("support", "support-v1")]);
    let adapters = BTreeMap::from([(
        "support-v1".to_string(),
        "/artifacts/adapters/support-v1".to_string(),
    )]);
    let v = server_config(&rev, &adapters, fault_injection(&md).as_ref());
    assert_eq!(v["servedModelName"], "base");
    assert_eq!(
        v["adapters"]["support-v1"],
        "/artifacts/adapters/support-v1"
    );
    assert!(v.get("faultInjection").is_none());
    md.metadata.annotations = Some(BTreeMap::from([(
        FAULT_INJECTION_ANNOTATION.to_string(),
        r#"{"errorRate":0.3,"adapters":["support-v3"]}"#.to_string(),
    )]));
    let v = server_config(&rev, &adapters, fault_injection(&md).as_ref());
    assert_eq!(v["faultInjection"]["errorRate"], 0.3);
    let cm = server_config_map(&md, &rev.pod_revision(), &v);
    let text = &cm.data.as_ref().expect("data")[SERVER_CONFIG_KEY];
    assert_eq!(serde_json::from_str::<Value>(text).expect("json"), v);
    // Read back, as the controller does to keep old adapters until the router is off them.
    assert_eq!(read_server_adapters(&cm), adapters);
}

#[test]
fn adapter_canary_splits_only_the_changed_route_on_the_same_pods() {
    let md = md();
    let v1 = revision(
        &md,
        vec![adapter("support", "support-v1"), adapter("faq", "faq-v1")],
    );
    let v2 = revision(
        &md,
        vec![adapter("support", "support-v2"), adapter("faq", "faq-v1")],
    );
    let (r1, r2) = (v1.revision(), v2.revision());
    let backend = "http://10.96.0.12:8000";
    let stable = Side {
        revision: &r1,
        spec: &v1,
        backend,
    };
    let canary = Side {
        revision: &r2,
        spec: &v2,
        backend,
    };
    let routes = router_routes(stable, Some((canary, 10)));
    let by_name: BTreeMap<&str, &RouterRoute> =
        routes.iter().map(|r| (r.model.as_str(), r)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["base", "faq", "support"]
    );
    assert_eq!(by_name["base"].targets.len(), 1);
    assert_eq!(by_name["faq"].targets.len(), 1);
    assert_eq!(by_name["faq"].targets[0].model, "faq-v1");
    let support = &by_name["support"].targets;
    assert_eq!(support.len(), 2);
    assert_eq!(
        (
            support[0].name.clone(),
            support[0].model.as_str(),
            support[0].weight
        ),
        (Some(stable_target(&r1)), "support-v1", 90)
    );
    assert_eq!(
        (
            support[1].name.clone(),
            support[1].model.as_str(),
            support[1].weight
        ),
        (Some(canary_target(&r2)), "support-v2", 10)
    );
    assert_eq!(support[0].backend, support[1].backend);
    let parsed = router_accepts(&router_config(routes, &[], 30));
    assert_eq!(parsed.routes["support"].weights(), [90, 10]);
    assert_eq!(parsed.stats_window, std::time::Duration::from_secs(30));
}

#[test]
fn pod_canary_splits_every_route_between_the_revisions_services() {
    let md = md();
    let v1 = revision(&md, vec![adapter("support", "support-v1")]);
    let mut spec = md.spec.clone();
    spec.server.max_batch_size = 64;
    let v2 = RevisionSpec::new(&spec, vec![adapter("support", "support-v1")]);
    let (r1, r2) = (v1.revision(), v2.revision());
    let stable = Side {
        revision: &r1,
        spec: &v1,
        backend: "http://10.96.0.12:8000",
    };
    let canary = Side {
        revision: &r2,
        spec: &v2,
        backend: "http://10.96.0.13:8000",
    };
    let routes = router_routes(stable, Some((canary, 50)));
    assert_eq!(routes.len(), 2);
    for r in &routes {
        assert_eq!(r.targets.len(), 2, "{}", r.model);
        assert_eq!(r.targets[0].backend.urls(), ["http://10.96.0.12:8000"]);
        assert_eq!(r.targets[1].backend.urls(), ["http://10.96.0.13:8000"]);
        assert_eq!(r.targets[0].model, r.targets[1].model);
        assert_eq!((r.targets[0].weight, r.targets[1].weight), (50, 50));
    }
    router_accepts(&router_config(routes.clone(), &[], 30));
    // Full weight: the stable target goes (the router wants a positive weight per target set).
    let full = router_routes(stable, Some((canary, 100)));
    assert!(
        full.iter()
            .all(|r| r.targets.len() == 1 && r.targets[0].name == Some(canary_target(&r2)))
    );
    router_accepts(&router_config(full, &[], 30));
    // Weight 0 (a canary still preparing): no canary target at all.
    let none = router_routes(stable, Some((canary, 0)));
    assert!(
        none.iter()
            .all(|r| r.targets.len() == 1 && r.targets[0].name == Some(stable_target(&r1)))
    );
    assert_eq!(none, router_routes(stable, None));
}

#[test]
fn a_served_name_only_the_canary_has_goes_to_the_canary() {
    let md = md();
    let v1 = revision(&md, vec![adapter("support", "support-v1")]);
    let v2 = revision(
        &md,
        vec![adapter("support", "support-v1"), adapter("faq", "faq-v1")],
    );
    let (r1, r2) = (v1.revision(), v2.revision());
    let b = "http://10.96.0.12:8000";
    let routes = router_routes(
        Side {
            revision: &r1,
            spec: &v1,
            backend: b,
        },
        Some((
            Side {
                revision: &r2,
                spec: &v2,
                backend: b,
            },
            10,
        )),
    );
    let faq = routes.iter().find(|r| r.model == "faq").expect("faq");
    assert_eq!(faq.targets.len(), 1);
    assert_eq!(faq.targets[0].name, Some(canary_target(&r2)));
    router_accepts(&router_config(routes, &[], 30));
}

#[test]
fn api_keys_reach_the_router_hashed_never_in_plaintext() {
    let md = md();
    let v1 = revision(&md, vec![]);
    let r1 = v1.revision();
    let routes = router_routes(
        Side {
            revision: &r1,
            spec: &v1,
            backend: "http://10.96.0.12:8000",
        },
        None,
    );
    let config = router_config(
        routes,
        &["sk-one".into(), "  ".into(), "sk-two\n".into()],
        30,
    );
    let text = serde_json::to_string(&config).expect("json");
    assert!(
        !text.contains("sk-one") && !text.contains("sk-two"),
        "{text}"
    );
    let parsed = router_accepts(&config);
    let keys = parsed.api_keys.expect("auth on");
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .any(|k| k.sha256 == tailor_router::config::key_digest("sk-two"))
    );
    let cm = router_config_map(&md, &config);
    assert_eq!(cm.metadata.name.as_deref(), Some("support-router"));
}

#[test]
fn router_deployment_and_service_expose_api_and_admin_ports() {
    let md = md();
    let d = router_deployment(&md, &cfg(), md.spec.replicas);
    crate::pods::assert_hardened(d.spec.template.spec.as_ref().expect("pod"));
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("tailor-router:test"));
    let args = c.args.clone().unwrap_or_default();
    assert!(args.contains(&"$(POD_IP):8080".to_string()), "{args:?}");
    assert!(args.contains(&"$(POD_IP):9090".to_string()), "{args:?}");
    assert!(
        args.contains(&"/etc/tailor-router/config.yaml".to_string()),
        "{args:?}"
    );
    let svc = router_service(&md);
    assert_eq!(svc.metadata.name.as_deref(), Some("support"));
    let ports: Vec<_> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    assert_eq!(
        ports,
        [("http".to_string(), 8080), ("admin".to_string(), 9090)]
    );
    let labels = svc.metadata.labels.clone().expect("labels");
    assert_eq!(labels["app.kubernetes.io/name"], "tailor-router");
    assert_eq!(labels[MDEP_LABEL], "support");
    // Two routers, spread over nodes where the scheduler can.
    assert_eq!(d.spec.replicas, Some(2));
    let pod = d.spec.template.spec.as_ref().expect("pod");
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .clone()
        })
        .expect("anti-affinity");
    assert_eq!(
        anti[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
}

#[test]
fn servers_require_the_token_the_router_sends_and_the_operator_uses() {
    let md = md();
    let rev = revision(&md, vec![adapter("support", "support-v1")]);
    let cm = serving_name("support", &rev.pod_revision());
    let vols =
        serving_volumes(&cfg(), "tailor-demo", &cm, &rev.pods, &BTreeMap::new()).expect("volumes");
    let token_file = "/etc/tailor-token/token".to_string();
    for (d, flags) in [
        (
            server_deployment(&md, &rev, &vols, &cfg(), md.spec.replicas),
            vec!["--api-key-file"],
        ),
        (
            router_deployment(&md, &cfg(), md.spec.replicas),
            vec!["--backend-token-file", "--admin-token-file"],
        ),
    ] {
        let c = container(&d);
        let args = c.args.clone().unwrap_or_default();
        for flag in flags {
            let at = args.iter().position(|a| a == flag).expect(flag);
            assert_eq!(args[at + 1], token_file, "{flag}");
        }
        let pod = d.spec.template.spec.as_ref().expect("pod");
        let vol = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "token")
            .expect("token volume");
        assert_eq!(
            vol.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("support-token")
        );
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "token" && m.read_only == Some(true))
        );
    }
    let secret = token_secret(&md, "t0k3n");
    assert_eq!(secret.metadata.name.as_deref(), Some("support-token"));
    assert!(
        secret.metadata.owner_references.is_some(),
        "owned: deleted with the deployment"
    );
}

#[test]
fn network_policies_admit_only_the_router_and_the_operator() {
    let md = md();
    let nps = network_policies(&md, "tailor-system");
    assert_eq!(nps.len(), 2);
    let servers = nps[0].spec.as_ref().expect("spec");
    assert_eq!(
        servers
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("pods")["app.kubernetes.io/name"],
        "tailor-server"
    );
    let rule = &servers.ingress.as_ref().expect("ingress")[0];
    let from = rule.from.as_ref().expect("from");
    assert_eq!(from.len(), 2);
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("router")["app.kubernetes.io/name"],
        "tailor-router"
    );
    assert!(
        from[0].namespace_selector.is_none(),
        "the router of this namespace"
    );
    assert_eq!(
        from[1]
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("ns")["kubernetes.io/metadata.name"],
        "tailor-system"
    );
    let router = nps[1].spec.as_ref().expect("spec");
    let rules = router.ingress.as_ref().expect("ingress");
    // The API port from anywhere; the admin port only from the operator.
    assert!(rules[0].from.is_none());
    assert_eq!(rules[1].from.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        rules[1].ports.as_ref().expect("ports")[0].port,
        Some(IntOrString::Int(ROUTER_ADMIN_PORT))
    );
}

#[test]
fn snapshots_round_trip() {
    let md = md();
    let v1 = revision(&md, vec![adapter("support", "support-v1")]);
    let cm = snapshot_config_map(&md, &v1);
    assert_eq!(
        cm.metadata.name.clone().expect("name"),
        format!("support-rev-{}", v1.revision())
    );
    assert_eq!(read_snapshot(&cm), Some(v1));
}

#[test]
fn long_names_stay_valid() {
    let long = "a".repeat(80);
    for n in [
        serving_name(&long, "0123abcd"),
        router_name(&long),
        snapshot_name(&long, "0123abcd-456789"),
        endpoint_service_name(&long),
    ] {
        assert!(n.len() <= 63, "{n}");
    }
}

#[test]
fn a_drain_takes_at_most_one_router_and_one_server_pod() {
    let md = md();
    let pdbs = disruption_budgets(&md);
    assert_eq!(pdbs.len(), 2);
    let router = router_deployment(&md, &cfg(), md.spec.replicas);
    let router_labels = router
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("router pod labels");
    for pdb in &pdbs {
        let spec = pdb.spec.as_ref().expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            pdb.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].kind.as_str()),
            Some("ModelDeployment")
        );
    }
    // The router's budget selects the router's pods (and only those).
    let sel = pdbs[0]
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .expect("selector");
    assert!(
        sel.iter().all(|(k, v)| router_labels.get(k) == Some(v)),
        "{sel:?}"
    );
    assert_eq!(sel["app.kubernetes.io/name"], "tailor-router");
    let sel = pdbs[1]
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .expect("selector");
    assert_eq!(sel["app.kubernetes.io/name"], "tailor-server");
}

#[test]
fn router_pods_grow_with_the_serving_pods_from_two_to_sixteen() {
    for (serving, routers) in [(0, 2), (1, 2), (8, 2), (9, 3), (12, 3), (13, 4), (256, 16)] {
        assert_eq!(
            super::router_replicas(serving),
            routers,
            "{serving} serving pods"
        );
    }
    let d = router_deployment(&md(), &cfg(), 20);
    assert_eq!(d.spec.replicas, Some(5));
}
