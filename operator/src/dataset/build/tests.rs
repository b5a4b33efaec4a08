use super::*;

fn fixture(yaml: &str) -> Dataset {
    let mut ds: Dataset = serde_saphyr::from_str(yaml).expect("fixture parses");
    ds.metadata.generation = Some(2);
    ds.metadata.uid = Some("uid-1".into());
    ds
}

const QUICKSTART: &str = r#"
apiVersion: tailor.dev/v1alpha1
kind: Dataset
metadata: {name: support-chat, namespace: tailor-demo}
spec:
  source:
    configMap: {name: support-chat-data, key: support-chat.jsonl}
  format: chat
  preparation:
    dedupe: true
    redact: [email, phone]
    minExamples: 100
    split: {validation: 0.1, seed: 0}
"#;

fn now() -> Timestamp {
    Timestamp::from_second(1_000).expect("valid")
}

#[test]
fn configmap_source_builds_a_job_mounting_it() {
    let ds = fixture(QUICKSTART);
    let cfg = OperatorConfig::for_tests();
    let v = validate(&ds, &cfg, Some("abc")).expect("valid");
    assert!(v.job_name.starts_with("support-chat-prepare-"));
    assert!(
        v.prepared_uri
            .starts_with("pvc://tailor-artifacts/datasets/support-chat/")
    );
    assert_eq!(v.prepare_config["input"], "/data/source/data.jsonl");
    assert_eq!(v.prepare_config["format"], "chat");
    assert_eq!(v.prepare_config["redact"], json!(["email", "phone"]));
    assert_eq!(v.prepare_config["minExamples"], 100);
    assert_eq!(
        v.prepare_config["output"],
        format!("/artifacts/{}", v.output_path)
    );
    let job = job(&ds, &v, &cfg);
    let spec = job.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod");
    crate::pods::assert_hardened(pod);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("tailor-trainer:test"));
    assert!(
        c.args
            .as_ref()
            .expect("args")
            .contains(&"prepare".to_string())
    );
    let vols = pod.volumes.as_ref().expect("volumes");
    let src = vols
        .iter()
        .find(|v| v.name == "source")
        .expect("source volume");
    assert_eq!(
        src.config_map.as_ref().map(|c| c.name.as_str()),
        Some("support-chat-data")
    );
    assert!(vols.iter().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|p| p.claim_name == "tailor-artifacts")
    }));
    let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(owner.kind, "Dataset");
    assert_eq!(owner.controller, Some(true));
    let cm = config_map(&ds, &v);
    let cfg_json: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().expect("data")["prepare.json"]).expect("json");
    assert_eq!(cfg_json, v.prepare_config);
}

#[test]
fn changed_source_or_preparation_changes_the_job() {
    let ds = fixture(QUICKSTART);
    let cfg = OperatorConfig::for_tests();
    let a = validate(&ds, &cfg, Some("abc")).expect("valid");
    assert_eq!(a, validate(&ds, &cfg, Some("abc")).expect("valid"));
    let b = validate(&ds, &cfg, Some("changed")).expect("valid");
    assert_ne!(a.job_name, b.job_name);
    let mut ds2 = ds.clone();
    ds2.spec.preparation.min_examples = 5;
    let c = validate(&ds2, &cfg, Some("abc")).expect("valid");
    assert_ne!(a.prepared_uri, c.prepared_uri);
}

#[test]
fn inline_and_uri_sources() {
    let cfg = OperatorConfig::for_tests();
    let mut ds = fixture(QUICKSTART);
    ds.spec.source.config_map = None;
    ds.spec.source.inline = Some("{\"text\":\"hi\"}\n".into());
    let v = validate(&ds, &cfg, None).expect("valid");
    assert_eq!(v.prepare_config["input"], "/etc/tailor/source.jsonl");
    assert!(
        config_map(&ds, &v)
            .data
            .expect("data")
            .contains_key("source.jsonl")
    );
    ds.spec.source.inline = None;
    // From a bucket: fetched by an init container with the named Secret.
    ds.spec.source.uri = Some("s3://bucket/raw/x.jsonl".into());
    ds.spec.source.credentials_secret_ref = Some(tailor_api::LocalRef {
        name: "s3-creds".into(),
    });
    let v = validate(&ds, &cfg, None).expect("valid");
    assert_eq!(v.prepare_config["input"], "/inputs/0/x.jsonl");
    let pod = job(&ds, &v, &cfg)
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod");
    crate::pods::assert_hardened(&pod);
    let init = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(init.len(), 1);
    assert_eq!(
        init[0].args.as_deref().unwrap_or_default()[..2],
        ["s3://bucket/raw/x.jsonl", "/inputs/0"]
    );
    // A prefix is a directory of JSONL files.
    ds.spec.source.uri = Some("s3://bucket/raw/".into());
    let v = validate(&ds, &cfg, None).expect("valid");
    assert_eq!(v.prepare_config["input"], "/inputs/0");
    ds.spec.source.uri = Some("s3://bad bucket/x.jsonl".into());
    let Err(Error::InvalidSpec(e)) = validate(&ds, &cfg, None) else {
        panic!("not a bucket name");
    };
    assert!(e.starts_with("spec.source.uri: "), "{e}");
    ds.spec.source.credentials_secret_ref = None;
    ds.spec.source.uri = Some("pvc://raw-data/in/x.jsonl".into());
    let v = validate(&ds, &cfg, None).expect("valid");
    assert_eq!(v.prepare_config["input"], "/mnt/raw-data/in/x.jsonl");
    let job = job(&ds, &v, &cfg);
    let pod = job.spec.expect("spec").template.spec.expect("pod");
    assert!(pod.volumes.expect("vols").iter().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|p| p.claim_name == "raw-data")
    }));
}

#[test]
fn seed_token_limit_and_tokenizer_reach_the_prepare_config() {
    let cfg = OperatorConfig::for_tests();
    let mut ds = fixture(QUICKSTART);
    ds.spec.preparation.split.seed = 7;
    ds.spec.preparation.max_tokens_per_example = 512;
    ds.spec.preparation.redact = vec![
        tailor_api::RedactKind::CreditCard,
        tailor_api::RedactKind::IpAddress,
    ];
    let v = validate(&ds, &cfg, Some("abc")).expect("valid");
    assert_eq!(v.prepare_config["seed"], 7);
    assert_eq!(v.prepare_config["maxTokensPerExample"], 512);
    assert_eq!(
        v.prepare_config["redact"],
        json!(["creditCard", "ipAddress"])
    );
    assert!(v.prepare_config.get("tokenizer").is_none());
    // spec.preparation.tokenizer is mounted and passed on; it changes the preparation.
    ds.spec.preparation.tokenizer = Some("pvc://models/llama/base".into());
    let t = validate(&ds, &cfg, Some("abc")).expect("valid");
    assert_eq!(t.prepare_config["tokenizer"], "/mnt/models/llama/base");
    assert_ne!(t.job_name, v.job_name);
    assert_ne!(t.prepared_uri, v.prepared_uri);
    let pod = job(&ds, &t, &cfg)
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod");
    let claim = pod
        .volumes
        .expect("vols")
        .into_iter()
        .find_map(|v| {
            v.persistent_volume_claim
                .filter(|p| p.claim_name == "models")
        })
        .expect("the tokenizer's claim is mounted");
    assert_eq!(claim.read_only, Some(true));
    // Another tokenizer prepares again.
    ds.spec.preparation.tokenizer = Some("pvc://models/mistral".into());
    let m = validate(&ds, &cfg, Some("abc")).expect("valid");
    assert_ne!(m.job_name, t.job_name);
    // Its tokenizer.json: the directory is what the prepare command reads.
    ds.spec.preparation.tokenizer = Some("pvc://models/llama/base/tokenizer.json".into());
    let f = validate(&ds, &cfg, Some("abc")).expect("valid");
    assert_eq!(f.prepare_config["tokenizer"], "/mnt/models/llama/base");
    ds.spec.preparation.tokenizer = Some("s3://bucket/model".into());
    let err = validate(&ds, &cfg, Some("abc")).expect_err("object stores cannot be mounted");
    assert_eq!(err.category(), Category::InvalidSpec);
    assert!(
        err.to_string().contains("spec.preparation.tokenizer"),
        "{err}"
    );
}

#[test]
fn tokenizer_uris_resolve_to_a_mountable_directory() {
    for (uri, want) in [
        ("pvc://models/llama", "pvc://models/llama"),
        ("pvc://models/llama/", "pvc://models/llama"),
        ("pvc://models/llama/tokenizer.json", "pvc://models/llama"),
        ("pvc://models/tokenizer.json", "pvc://models/"),
        (
            "pvc://models/my-tokenizer.json",
            "pvc://models/my-tokenizer.json",
        ),
        ("file:///models/llama", "file:///models/llama"),
        (
            "file:///models/llama/tokenizer.json",
            "file:///models/llama",
        ),
        ("file:///tokenizer.json", "file:///"),
    ] {
        assert_eq!(tokenizer_dir(uri).expect(uri), want, "{uri}");
    }
    for bad in [
        "gs://b/m",
        "hf://meta/llama",
        "models/llama",
        "file://rel/path",
    ] {
        assert_eq!(
            tokenizer_dir(bad).expect_err(bad).category(),
            Category::InvalidSpec,
            "{bad}"
        );
    }
    // A file:// tokenizer.json mounts its directory (read-only) into the pod, where the
    // admin allows node paths at all.
    let mut cfg = OperatorConfig::for_tests();
    let mut ds = fixture(QUICKSTART);
    ds.spec.preparation.tokenizer = Some("file:///srv/models/base/tokenizer.json".into());
    let err = validate(&ds, &cfg, Some("abc")).expect_err("file:// is off by default");
    assert!(err.to_string().contains("allowFileUris"), "{err}");
    cfg.allow_file_uris = true;
    let v = validate(&ds, &cfg, Some("abc")).expect("valid");
    assert_eq!(v.prepare_config["tokenizer"], "/srv/models/base");
    let pod = job(&ds, &v, &cfg)
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod");
    let host = pod
        .volumes
        .expect("vols")
        .into_iter()
        .find_map(|v| v.host_path)
        .expect("hostPath volume");
    assert_eq!(host.path, "/srv/models/base");
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.mount_path == "/srv/models/base")
        .cloned()
        .expect("mounted at its own path");
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn two_sources_are_invalid() {
    let cfg = OperatorConfig::for_tests();
    let mut ds = fixture(QUICKSTART);
    ds.spec.source.inline = Some("x".into());
    let err = validate(&ds, &cfg, None).expect_err("invalid");
    assert_eq!(err.category(), Category::InvalidSpec);
}

#[test]
fn prepared_summary_becomes_ready_status() {
    let ds = fixture(QUICKSTART);
    let cfg = OperatorConfig::for_tests();
    let v = validate(&ds, &cfg, Some("abc")).expect("valid");
    let summary: Summary = serde_json::from_str(
        r#"{"status":"Succeeded","examples":200,"invalid":2,"duplicatesRemoved":4,"redactions":7,"train":181,"validation":19,"test":0,"contentHash":"ff00","invalidSamples":[{"line":17,"reason":"not JSON"},{"line":90,"reason":"no assistant message"}]}"#,
    )
    .expect("summary");
    let st = status(&ds, Some(&v), &Observation::Prepared(summary), now());
    assert_eq!(st.phase, DatasetPhase::Ready);
    assert_eq!(st.observed_generation, Some(2));
    let stats = st.stats.expect("stats");
    assert_eq!(
        (
            stats.examples,
            stats.invalid,
            stats.duplicates_removed,
            stats.redactions
        ),
        (200, 2, 4, 7)
    );
    assert_eq!(st.content_hash.as_deref(), Some("ff00"));
    assert_eq!(st.prepared_uri.as_deref(), Some(v.prepared_uri.as_str()));
    assert_eq!(st.invalid_samples.len(), 2);
    assert!(conditions::is_true(&st.conditions, READY));
    assert!(!conditions::is_true(&st.conditions, PROGRESSING));
    assert_eq!(
        conditions::get(&st.conditions, READY)
            .expect("ready")
            .observed_generation,
        Some(2)
    );
}

#[test]
fn failure_and_blocked_states() {
    let ds = fixture(QUICKSTART);
    let st = status(
        &ds,
        None,
        &Observation::Failed {
            message: "only 3 valid examples".into(),
            stats: None,
        },
        now(),
    );
    assert_eq!(st.phase, DatasetPhase::Failed);
    assert!(conditions::is_true(&st.conditions, DEGRADED));
    assert_eq!(
        conditions::get(&st.conditions, READY).expect("c").reason,
        "JobFailed"
    );
    assert_eq!(
        failure_message(Some(
            r#"{"status":"Failed","message":"only 3 valid examples"}"#
        ))
        .as_deref(),
        Some("only 3 valid examples")
    );
    let st = status(
        &ds,
        None,
        &Observation::Blocked {
            category: Category::SourceNotFound,
            message: "configmap x not found".into(),
        },
        now(),
    );
    assert_eq!(st.phase, DatasetPhase::Pending);
    assert_eq!(
        conditions::get(&st.conditions, READY).expect("c").reason,
        "SourceNotFound"
    );
}
