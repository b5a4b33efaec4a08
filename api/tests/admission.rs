//! Every example validates against the generated schemas; the table of invalid manifests
//! (`fixtures/invalid-manifests.yaml`, shared with tailor-sim's kubectl suite) is rejected by the
//! schema or a CEL rule, each with the offending field named.

mod common;
#[path = "fixtures/invalid_manifests.rs"]
mod invalid_manifests;

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
    invalid_manifests::table().manifest("Dataset", "d", &spec)
}
fn ftj(patch: Value) -> Value {
    invalid_manifests::table().manifest("FineTuneJob", "j", &patch)
}
fn mdep(patch: Value) -> Value {
    invalid_manifests::table().manifest("ModelDeployment", "m", &patch)
}
fn lora(patch: Value) -> Value {
    invalid_manifests::table().manifest("LoraAdapter", "a", &patch)
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
    // The table both admission suites share; this one expects the validators' wording.
    let table = invalid_manifests::table();
    assert!(table.rows.len() >= 15);
    let mut wrong = vec![];
    for row in &table.rows {
        let (obj, old) = row.manifests(&table, "x");
        if let Some(old) = &old {
            assert_eq!(
                common::admission_errors(old, None),
                Vec::<String>::new(),
                "{}: the object before the update must be valid",
                row.case
            );
        }
        let errors = common::admission_errors(&obj, old.as_ref());
        if !errors.iter().any(|e| row.api.matches(e)) {
            wrong.push(format!(
                "{}: expected an error at `{}` mentioning `{}`, got {errors:?}",
                row.case, row.api.field, row.api.says
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
        invalid_manifests::merge(&mut patch, change.clone());
        let new = with_phase(ftj(patch), "Succeeded");
        if let Err(errors) = frozen(&new) {
            panic!("{change}: expected the frozen-spec error, got {errors:?}");
        }
    }
    // suspend may change; status writes (same spec) pass.
    let mut suspend = full.clone();
    invalid_manifests::merge(&mut suspend, json!({"suspend": true}));
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
    invalid_manifests::merge(&mut epochs, json!({"hyperparameters": {"epochs": 9}}));
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
        "activeDeadlineSeconds": 5, "output": {"adapterName": "x"},
        "podTemplate": {"serviceAccountName": "trainer"}, "evaluation": {}
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
