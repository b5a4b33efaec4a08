//! The committed CRD YAML equals what `crdgen` writes, and each CRD carries what `kubectl` and
//! GitOps tools rely on.

mod common;

use serde_json::Value;

#[test]
fn committed_crds_match_crdgen_output() {
    let dir = common::repo_root().join("crds");
    let generated = tailor_api::crd_files().expect("yaml");
    for (file, want) in &generated {
        let path = dir.join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            &have == want,
            "{} is out of date: run `cargo run -p tailor-api --bin crdgen -- --out crds/`",
            path.display()
        );
    }
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        files.len(),
        generated.len(),
        "stray files in crds/: {files:?}"
    );
}

fn find_key<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(key) {
                out.push(x);
            }
            m.values().for_each(|c| find_key(c, key, out));
        }
        Value::Array(a) => a.iter().for_each(|c| find_key(c, key, out)),
        _ => {}
    }
}

#[test]
fn every_crd_has_status_shortname_category_columns_defaults_and_cel() {
    let expected_short = [
        ("Dataset", "dset"),
        ("FineTuneJob", "ftj"),
        ("LoraAdapter", "lora"),
        ("ModelDeployment", "mdep"),
    ];
    for (_, crd) in tailor_api::crds() {
        let kind = crd.spec.names.kind.clone();
        assert_eq!(crd.spec.group, "tailor.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let short = expected_short
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| *s);
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.expect("known kind").to_string()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["tailor".to_string()][..])
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind}: status subresource"
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            cols.contains(&"Phase") && cols.contains(&"Age"),
            "{kind}: printer columns {cols:?}"
        );
        let schema = common::schema_of(&kind);
        let mut defaults = vec![];
        find_key(&schema["properties"]["spec"], "default", &mut defaults);
        let mut rules = vec![];
        find_key(&schema, "x-kubernetes-validations", &mut rules);
        assert!(!rules.is_empty(), "{kind}: CEL rules");
        if kind != "LoraAdapter" {
            assert!(defaults.len() >= 3, "{kind}: schema defaults");
        }
    }
}

#[test]
fn defaults_fill_an_omitted_block_so_gitops_sees_no_drift() {
    let obj = serde_json::json!({
        "apiVersion": "tailor.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
        "spec": {"baseModel": {"uri": "pvc://a/b"}, "datasetRef": {"name": "d"}}
    });
    let d = kube_cel::apply_defaults(&common::schema_of("FineTuneJob"), &obj);
    assert_eq!(d["spec"]["lora"]["rank"], 8);
    assert_eq!(d["spec"]["hyperparameters"]["scheduler"], "cosine");
    assert_eq!(d["spec"]["method"], "lora");
    assert_eq!(d["spec"]["resources"]["gpus"], 1);
    // One trainer pod unless asked (the apiserver also defaults inside a defaulted block, which
    // kube-cel does not: so a block that is written).
    let mut two_gpus = obj.clone();
    two_gpus["spec"]["resources"] = serde_json::json!({"gpus": 2});
    let d2 = kube_cel::apply_defaults(&common::schema_of("FineTuneJob"), &two_gpus);
    assert_eq!(d2["spec"]["resources"]["nodes"], 1);
    // And the typed defaults agree with the schema's.
    let typed: tailor_api::FineTuneJobSpec =
        serde_json::from_value(obj["spec"].clone()).expect("spec");
    assert_eq!(
        serde_json::to_value(&typed.hyperparameters).expect("json"),
        d["spec"]["hyperparameters"]
    );
}
