//! Every example validates against the generated schemas; a table of invalid manifests is
//! rejected by the schema or a CEL rule, each with the offending field named.

mod common;

use std::path::Path;

use serde_json::{Value, json};

fn walk_yaml(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk_yaml(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

#[test]
fn every_example_is_admitted() {
    let mut files = vec![];
    walk_yaml(&common::repo_root().join("examples"), &mut files);
    let mut checked = 0;
    for file in &files {
        for doc in common::yaml_docs(file) {
            if doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("tailor.dev/"))
            {
                let errors = common::admission_errors(&doc, None);
                assert!(errors.is_empty(), "{}: {errors:?}", file.display());
                // The typed API reads it too.
                let kind = doc["kind"].as_str().unwrap_or_default();
                let spec = doc["spec"].clone();
                let parsed = match kind {
                    "Dataset" => serde_json::from_value::<tailor_api::DatasetSpec>(spec).map(drop),
                    "FineTuneJob" => {
                        serde_json::from_value::<tailor_api::FineTuneJobSpec>(spec).map(drop)
                    }
                    "LoraAdapter" => {
                        serde_json::from_value::<tailor_api::LoraAdapterSpec>(spec).map(drop)
                    }
                    "ModelDeployment" => {
                        serde_json::from_value::<tailor_api::ModelDeploymentSpec>(spec).map(drop)
                    }
                    other => panic!("unknown kind {other}"),
                };
                parsed.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 4,
        "expected the quickstart's Dataset, FineTuneJob, ModelDeployment and more; checked {checked}"
    );
}

fn dataset(spec: Value) -> Value {
    json!({"apiVersion": "tailor.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"}, "spec": spec})
}
fn ftj(patch: Value) -> Value {
    let mut spec =
        json!({"baseModel": {"uri": "pvc://artifacts/models/base"}, "datasetRef": {"name": "d"}});
    merge(&mut spec, patch);
    json!({"apiVersion": "tailor.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j"}, "spec": spec})
}
fn mdep(patch: Value) -> Value {
    let mut spec = json!({"baseModel": {"uri": "pvc://artifacts/models/base", "servedName": "base"},
                          "adapters": [{"name": "support", "adapterRef": {"name": "a1"}}]});
    merge(&mut spec, patch);
    json!({"apiVersion": "tailor.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": spec})
}
fn lora(patch: Value) -> Value {
    let mut spec = json!({"baseModel": {"uri": "pvc://artifacts/models/base"}, "uri": "pvc://artifacts/adapters/a1",
                          "rank": 8, "alpha": 16});
    merge(&mut spec, patch);
    json!({"apiVersion": "tailor.dev/v1alpha1", "kind": "LoraAdapter", "metadata": {"name": "a"}, "spec": spec})
}
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

#[test]
fn valid_baselines_are_admitted() {
    for obj in [
        dataset(json!({"source": {"inline": "{}"}})),
        ftj(json!({})),
        mdep(json!({})),
        lora(json!({})),
    ] {
        assert_eq!(
            common::admission_errors(&obj, None),
            Vec::<String>::new(),
            "{obj}"
        );
    }
}

#[test]
fn invalid_manifests_are_rejected_naming_the_field() {
    // (case, manifest, a field path the error must name, a phrase of the reason)
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "two dataset sources",
            dataset(json!({"source": {"inline": "{}", "uri": "s3://b/k"}})),
            "spec.source",
            "exactly one",
        ),
        (
            "no dataset source",
            dataset(json!({"source": {}})),
            "spec.source",
            "exactly one",
        ),
        (
            "unknown format",
            dataset(json!({"source": {"inline": "{}"}, "format": "parquet"})),
            "spec.format",
            "parquet",
        ),
        (
            "splits sum to 1",
            dataset(
                json!({"source": {"inline": "{}"}, "preparation": {"split": {"validation": 0.6, "test": 0.4}}}),
            ),
            "spec.preparation.split",
            "below 1",
        ),
        (
            "negative split",
            dataset(
                json!({"source": {"inline": "{}"}, "preparation": {"split": {"validation": -0.1}}}),
            ),
            "spec.preparation.split.validation",
            "minimum",
        ),
        (
            "unknown redaction",
            dataset(json!({"source": {"inline": "{}"}, "preparation": {"redact": ["ssn"]}})),
            "spec.preparation.redact[0]",
            "ssn",
        ),
        (
            "minExamples as string",
            dataset(json!({"source": {"inline": "{}"}, "preparation": {"minExamples": "many"}})),
            "spec.preparation.minExamples",
            "integer",
        ),
        (
            "tokenizer in an object store",
            dataset(
                json!({"source": {"inline": "{}"}, "preparation": {"tokenizer": "s3://b/models/base"}}),
            ),
            "spec.preparation.tokenizer",
            "does not match",
        ),
        (
            "tokenizer not a URI",
            dataset(
                json!({"source": {"inline": "{}"}, "preparation": {"tokenizer": "models/base"}}),
            ),
            "spec.preparation.tokenizer",
            "does not match",
        ),
        (
            "tokenizer a JSON file other than tokenizer.json",
            dataset(
                json!({"source": {"inline": "{}"}, "preparation": {"tokenizer": "pvc://models/base/config.json"}}),
            ),
            "spec.preparation.tokenizer",
            "model directory or its tokenizer.json",
        ),
        (
            "missing datasetRef",
            ftj(json!({"datasetRef": null})),
            "spec",
            "datasetRef",
        ),
        (
            "rank 0",
            ftj(json!({"lora": {"rank": 0}})),
            "spec.lora.rank",
            "minimum",
        ),
        (
            "learning rate 0",
            ftj(json!({"hyperparameters": {"learningRate": 0.0}})),
            "spec.hyperparameters.learningRate",
            "greater than 0",
        ),
        (
            "unknown scheduler",
            ftj(json!({"hyperparameters": {"scheduler": "exponential"}})),
            "spec.hyperparameters.scheduler",
            "exponential",
        ),
        (
            "epochs as string",
            ftj(json!({"hyperparameters": {"epochs": "three"}})),
            "spec.hyperparameters.epochs",
            "integer",
        ),
        (
            "unknown target module",
            ftj(json!({"lora": {"targetModules": ["attn"]}})),
            "spec.lora.targetModules",
            "targetModules may only name",
        ),
        (
            "bad base model URI",
            ftj(json!({"baseModel": {"uri": "ftp://x/y"}})),
            "spec.baseModel.uri",
            "does not match",
        ),
        (
            "too many GPUs",
            ftj(json!({"resources": {"gpus": 1000}})),
            "spec.resources.gpus",
            "maximum",
        ),
        (
            "unknown method",
            ftj(json!({"method": "full"})),
            "spec.method",
            "full",
        ),
        (
            "weights not increasing",
            mdep(json!({"rollout": {"steps": [{"weight": 50}, {"weight": 20}]}})),
            "spec.rollout.steps",
            "strictly increasing",
        ),
        (
            "repeated weight",
            mdep(json!({"rollout": {"steps": [{"weight": 20}, {"weight": 20}]}})),
            "spec.rollout.steps",
            "strictly increasing",
        ),
        (
            "weight above 100",
            mdep(json!({"rollout": {"steps": [{"weight": 150}]}})),
            "spec.rollout.steps[0].weight",
            "maximum",
        ),
        (
            "weight 0",
            mdep(json!({"rollout": {"steps": [{"weight": 0}]}})),
            "spec.rollout.steps[0].weight",
            "minimum",
        ),
        (
            "duplicate adapter names",
            mdep(
                json!({"adapters": [{"name": "x", "adapterRef": {"name": "a"}}, {"name": "x", "adapterRef": {"name": "b"}}]}),
            ),
            "spec.adapters",
            "unique",
        ),
        (
            "adapter named like the base",
            mdep(json!({"adapters": [{"name": "base", "adapterRef": {"name": "a"}}]})),
            "spec",
            "servedName",
        ),
        (
            "bad pause duration",
            mdep(json!({"rollout": {"steps": [{"weight": 10, "pause": "five minutes"}]}})),
            "spec.rollout.steps[0].pause",
            "does not match",
        ),
        (
            "error rate above 1",
            mdep(json!({"rollout": {"analysis": {"maxErrorRate": 1.5}}})),
            "spec.rollout.analysis.maxErrorRate",
            "maximum",
        ),
        (
            "prometheus without address",
            mdep(json!({"rollout": {"analysis": {"metricsSource": "prometheus"}}})),
            "spec.rollout.analysis",
            "prometheus.address",
        ),
        (
            "unknown dtype",
            mdep(json!({"server": {"dtype": "int3"}})),
            "spec.server.dtype",
            "int3",
        ),
        (
            "replicas negative",
            mdep(json!({"replicas": -1})),
            "spec.replicas",
            "minimum",
        ),
        (
            "missing servedName",
            mdep(json!({"baseModel": {"uri": "pvc://a/b", "servedName": null}})),
            "spec.baseModel",
            "servedName",
        ),
        (
            "bad sha256",
            lora(json!({"sha256": "xyz"})),
            "spec.sha256",
            "does not match",
        ),
        (
            "unknown deletion policy",
            lora(json!({"deletionPolicy": "Shred"})),
            "spec.deletionPolicy",
            "Shred",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut wrong = vec![];
    for (name, obj, field, phrase) in cases {
        let errors = common::admission_errors(&obj, None);
        if !errors
            .iter()
            .any(|e| e.starts_with(field) && e.contains(phrase))
        {
            wrong.push(format!(
                "{name}: expected an error at `{field}` mentioning `{phrase}`, got {errors:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn tokenizer_uris_are_admitted() {
    for uri in [
        "pvc://tailor-artifacts/models/base",
        "pvc://models/llama/tokenizer.json",
        "file:///srv/models/base",
    ] {
        let obj = dataset(json!({"source": {"inline": "{}"}, "preparation": {"tokenizer": uri}}));
        assert_eq!(
            common::admission_errors(&obj, None),
            Vec::<String>::new(),
            "{uri}"
        );
    }
}

fn with_phase(mut obj: Value, phase: &str) -> Value {
    obj["status"] = json!({"phase": phase, "observedGeneration": 1});
    obj
}

#[test]
fn a_succeeded_jobs_spec_is_frozen_but_suspend() {
    let full = json!({"hyperparameters": {"epochs": 2}, "nodeSelector": {"gpu": "a100"},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                      "priorityClassName": "training", "activeDeadlineSeconds": 3600});
    let old = with_phase(ftj(full.clone()), "Succeeded");
    let frozen = |new: &Value| {
        let errors = common::admission_errors(new, Some(&old));
        errors
            .iter()
            .any(|e| {
                // The rule's fieldPath is `.spec`.
                e.trim_start_matches('.').starts_with("spec:")
                    && e.contains("create a new FineTuneJob")
            })
            .then_some(())
            .ok_or(errors)
    };
    // Every field that makes a run, changed, added or removed, is refused.
    let changes = [
        json!({"baseModel": {"uri": "pvc://artifacts/models/other"}}),
        json!({"datasetRef": {"name": "other"}}),
        json!({"lora": {"rank": 16}}),
        json!({"hyperparameters": {"epochs": 3}}),
        json!({"resources": {"gpus": 2}}),
        json!({"nodeSelector": {"gpu": "h100"}}),
        json!({"nodeSelector": null}),
        json!({"tolerations": null}),
        json!({"priorityClassName": "other"}),
        json!({"backoffLimit": 0}),
        json!({"activeDeadlineSeconds": null}),
        json!({"checkpointEverySteps": 7}),
        json!({"output": {"adapterName": "other"}}),
    ];
    for change in changes {
        let mut patch = full.clone();
        merge(&mut patch, change.clone());
        let new = with_phase(ftj(patch), "Succeeded");
        if let Err(errors) = frozen(&new) {
            panic!("{change}: expected the frozen-spec error, got {errors:?}");
        }
    }
    // suspend may change; status writes (same spec) pass.
    let mut suspend = full.clone();
    merge(&mut suspend, json!({"suspend": true}));
    let new = with_phase(ftj(suspend), "Succeeded");
    assert_eq!(
        common::admission_errors(&new, Some(&old)),
        Vec::<String>::new()
    );
    assert_eq!(
        common::admission_errors(&old, Some(&old)),
        Vec::<String>::new()
    );
    // Before success (running, failed, no status yet) the spec may change: the operator starts a
    // new run for it.
    let mut epochs = full.clone();
    merge(&mut epochs, json!({"hyperparameters": {"epochs": 9}}));
    for phase in ["Running", "Failed", "Cancelled", "Queued"] {
        let old = with_phase(ftj(full.clone()), phase);
        let new = with_phase(ftj(epochs.clone()), phase);
        assert_eq!(
            common::admission_errors(&new, Some(&old)),
            Vec::<String>::new(),
            "{phase}"
        );
    }
    assert_eq!(
        common::admission_errors(&ftj(epochs), Some(&ftj(full))),
        Vec::<String>::new()
    );
}

#[test]
fn the_frozen_spec_rule_names_every_field_but_suspend() {
    // A spec with every optional field set: its keys are the schema's spec properties.
    let spec: tailor_api::FineTuneJobSpec = serde_json::from_value(json!({
        "baseModel": {"uri": "pvc://a/b"}, "datasetRef": {"name": "d"},
        "nodeSelector": {"a": "b"}, "tolerations": [{"key": "k"}], "priorityClassName": "p",
        "activeDeadlineSeconds": 5, "output": {"adapterName": "x"}
    }))
    .expect("spec");
    let mut keys: Vec<String> = serde_json::to_value(&spec)
        .expect("json")
        .as_object()
        .expect("object")
        .keys()
        .filter(|k| *k != "suspend")
        .cloned()
        .collect();
    keys.sort();
    let schema = common::schema_of("FineTuneJob");
    let mut props: Vec<String> = schema["properties"]["spec"]["properties"]
        .as_object()
        .expect("spec properties")
        .keys()
        .filter(|k| *k != "suspend")
        .cloned()
        .collect();
    props.sort();
    assert_eq!(keys, props);
    let mut fields: Vec<String> = tailor_api::RUN_SPEC_FIELDS
        .iter()
        .map(|f| f.to_string())
        .collect();
    fields.sort();
    assert_eq!(
        fields, props,
        "RUN_SPEC_FIELDS must list every spec field but suspend"
    );
}

#[test]
fn adapter_artifact_is_immutable() {
    let old = lora(json!({}));
    let new = lora(json!({"uri": "pvc://artifacts/adapters/other"}));
    let errors = common::admission_errors(&new, Some(&old));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("spec.uri") && e.contains("immutable")),
        "{errors:?}"
    );
    assert!(common::admission_errors(&old, Some(&old)).is_empty());
}
