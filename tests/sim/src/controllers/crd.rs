//! CustomResourceDefinitions: serve their versions (discovery, storage, admission), report
//! NamesAccepted/Established, and on deletion remove every instance before the CRD goes.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::admission::CrdSchema;
use crate::cluster::{Cluster, DeleteOpts, WriteOpts};
use crate::controllers::set_condition;
use crate::resources::ResourceType;

const CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

pub fn after_write(cluster: &Arc<Cluster>, rt: &ResourceType, obj: &Value) {
    if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
        reconcile(cluster, obj["metadata"]["name"].as_str().unwrap_or(""));
    }
}

pub fn reconcile_all(cluster: &Arc<Cluster>) {
    let (crds, _) = cluster
        .store
        .list("apiextensions.k8s.io/customresourcedefinitions", None);
    let names: Vec<String> = crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
        .collect();
    for n in &names {
        reconcile(cluster, n);
    }
    // Types whose CRD is gone stop being served.
    for t in cluster.registry.all() {
        if let Some(c) = &t.crd
            && !names.contains(&c.crd_name)
        {
            cluster.registry.set_crd(&c.crd_name.clone(), vec![]);
        }
    }
}

fn types_of(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("").to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or("").to_string();
    let kind = names["kind"].as_str().unwrap_or("").to_string();
    let mut out = vec![];
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let mut subs: Vec<&'static str> = vec![];
        if v["subresources"]["status"].is_object() {
            subs.push("status");
        }
        if v["subresources"]["scale"].is_object() {
            subs.push("scale");
        }
        let version = v["name"].as_str().unwrap_or("").to_string();
        let schema = v["schema"]["openAPIV3Schema"].clone();
        out.push(ResourceType {
            group: group.clone(),
            version: version.clone(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: names["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| kind.to_lowercase()),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: names["shortNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
            categories: names["categories"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
            subresources: subs,
            verbs: vec![
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ],
            crd: Some(Arc::new(CrdSchema {
                crd_name: crd["metadata"]["name"].as_str().unwrap_or("").to_string(),
                group: group.clone(),
                kind: kind.clone(),
                version,
                schema: if schema.is_object() {
                    schema
                } else {
                    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
                },
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                scale: v["subresources"]["scale"]
                    .as_object()
                    .map(|m| Value::Object(m.clone())),
            })),
        });
    }
    out
}

pub fn reconcile(cluster: &Arc<Cluster>, name: &str) {
    let Ok(crd_rt) = cluster.rt("apiextensions.k8s.io", "customresourcedefinitions") else {
        return;
    };
    let Some(crd) = cluster.store.get(&crd_rt.gr(), "", name) else {
        cluster.registry.set_crd(name, vec![]);
        return;
    };
    let group = crd["spec"]["group"].as_str().unwrap_or("").to_string();
    let plural = crd["spec"]["names"]["plural"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if !crd["metadata"]["deletionTimestamp"].is_null() {
        let gr = format!("{group}/{plural}");
        let (items, _) = cluster.store.list(&gr, None);
        if let Some(rt) = cluster.registry.find_gr(&group, &plural) {
            for o in &items {
                let _ = cluster.delete(
                    &rt,
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or(""),
                    &DeleteOpts::default(),
                );
            }
        }
        if cluster.store.count(&gr) == 0 {
            cluster.registry.set_crd(name, vec![]);
            let mut n = (*crd).clone();
            if let Some(f) = n["metadata"]["finalizers"].as_array_mut() {
                f.retain(|x| x.as_str() != Some(CLEANUP));
            }
            let _ = cluster.update(
                &crd_rt,
                "",
                name,
                n,
                &WriteOpts::system("apiextensions-apiserver"),
            );
        }
        return;
    }
    cluster.registry.set_crd(name, types_of(&crd));
    let has_fin = crd["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f.as_str() == Some(CLEANUP));
    if !has_fin {
        let mut n = (*crd).clone();
        match n["metadata"]["finalizers"].as_array_mut() {
            Some(f) => f.push(json!(CLEANUP)),
            None => n["metadata"]["finalizers"] = json!([CLEANUP]),
        }
        let _ = cluster.update(
            &crd_rt,
            "",
            name,
            n,
            &WriteOpts::system("apiextensions-apiserver"),
        );
    }
    let Some(crd) = cluster.store.get(&crd_rt.gr(), "", name) else {
        return;
    };
    let mut status = crd["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    set_condition(
        &mut conds,
        "NamesAccepted",
        "True",
        "NoConflicts",
        "no conflicts found",
    );
    set_condition(
        &mut conds,
        "Established",
        "True",
        "InitialNamesAccepted",
        "the initial names have been accepted",
    );
    status["conditions"] = Value::Array(conds);
    status["acceptedNames"] = crd["spec"]["names"].clone();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    status["storedVersions"] = Value::Array(storage);
    if status != crd["status"] {
        let mut n = (*crd).clone();
        n["status"] = status;
        let _ = cluster.update(
            &crd_rt,
            "",
            name,
            n,
            &WriteOpts::status("apiextensions-apiserver"),
        );
    }
}
