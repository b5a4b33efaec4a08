//! The install manifests render with the real `kubectl kustomize` and hold what the operator
//! needs: every kind, RBAC covering the CRDs and their status, a locked-down pod.

mod common;

use serde_json::Value;

fn render(dir: &str) -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .args([
            "kustomize",
            &common::repo_root().join(dir).to_string_lossy(),
        ])
        .output()
        .expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8_lossy(&out.stdout))
        .expect("rendered YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn rule_allows(rules: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    let has = |r: &Value, key: &str, want: &str| {
        r[key]
            .as_array()
            .is_some_and(|xs| xs.iter().any(|x| x == want || x == "*"))
    };
    rules.iter().any(|r| {
        has(r, "apiGroups", group) && has(r, "resources", resource) && has(r, "verbs", verb)
    })
}

fn check_install(objs: &[Value]) {
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "ConfigMap",
    ] {
        assert!(!of_kind(objs, kind).is_empty(), "missing {kind}");
    }
    assert_eq!(of_kind(objs, "CustomResourceDefinition").len(), 4);
    for o in objs.iter().filter(|o| {
        !matches!(
            o["kind"].as_str(),
            Some("Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding")
        )
    }) {
        assert_eq!(
            o["metadata"]["namespace"], "tailor-system",
            "{} {}",
            o["kind"], o["metadata"]["name"]
        );
    }

    let role = |name: &str| -> Vec<Value> {
        of_kind(objs, "ClusterRole")
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("ClusterRole {name}"))["rules"]
            .as_array()
            .expect("rules")
            .clone()
    };
    let rules = role("tailor-operator");
    // Tenants edit specs but never write status: that is the operator's record.
    let tenant = role("tailor-edit");
    assert!(rule_allows(&tenant, "tailor.dev", "finetunejobs", "create"));
    assert!(!rule_allows(
        &tenant,
        "tailor.dev",
        "finetunejobs/status",
        "patch"
    ));
    for plural in [
        "datasets",
        "finetunejobs",
        "loraadapters",
        "modeldeployments",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(
                rule_allows(&rules, "tailor.dev", plural, verb),
                "{verb} {plural}"
            );
        }
        assert!(
            rule_allows(&rules, "tailor.dev", &format!("{plural}/status"), "patch"),
            "patch {plural}/status"
        );
    }
    assert!(
        !rule_allows(&rules, "tailor.dev", "finetunejobs", "update"),
        "the operator never writes spec"
    );
    for (group, res) in [
        ("batch", "jobs"),
        ("apps", "deployments"),
        ("", "services"),
        ("", "configmaps"),
    ] {
        assert!(rule_allows(&rules, group, res, "create"), "create {res}");
    }
    assert!(rule_allows(&rules, "", "events", "create"));
    // Secrets: each ModelDeployment's serving token is created once, never updated, and no
    // Secret is listed or watched cluster-wide.
    assert!(rule_allows(&rules, "", "secrets", "create"));
    for verb in ["list", "watch", "update", "patch", "delete"] {
        assert!(
            !rule_allows(&rules, "", "secrets", verb),
            "no secret {verb}"
        );
    }
    let lease_rules = of_kind(objs, "Role")[0]["rules"]
        .as_array()
        .expect("rules")
        .clone();
    assert!(rule_allows(
        &lease_rules,
        "coordination.k8s.io",
        "leases",
        "update"
    ));

    let dep = of_kind(objs, "Deployment")[0];
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "tailor-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["requests"]["memory"].is_string()
    );
}

#[test]
fn base_renders_a_complete_locked_down_install() {
    check_install(&render("manifests/base"));
}

#[test]
fn kind_overlay_renders_with_local_images_and_rwo_storage() {
    let objs = render("manifests/overlays/kind");
    check_install(&objs);
    let pvc = of_kind(&objs, "PersistentVolumeClaim")[0];
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
    let dep = of_kind(&objs, "Deployment")[0];
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "tailor-operator:dev"
    );
}

#[test]
fn quickstart_renders_and_carries_the_dataset() {
    let objs = render("examples/quickstart");
    let cm = of_kind(&objs, "ConfigMap");
    assert_eq!(cm.len(), 1);
    let data = cm[0]["data"]["support-chat.jsonl"]
        .as_str()
        .expect("jsonl in configmap");
    assert!(data.lines().count() >= 200);
    for kind in ["Dataset", "FineTuneJob", "ModelDeployment"] {
        let o = of_kind(&objs, kind);
        assert_eq!(o.len(), 1, "{kind}");
        assert_eq!(o[0]["metadata"]["namespace"], "tailor-demo");
        assert!(common::admission_errors(o[0], None).is_empty());
    }
}

#[test]
fn artifact_store_overlay_renders_an_install_without_any_claim() {
    let objs = render("manifests/overlays/artifact-store");
    assert!(of_kind(&objs, "PersistentVolumeClaim").is_empty());
    let dep = of_kind(&objs, "Deployment")[0];
    let volumes = dep["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    assert!(
        volumes.iter().all(|v| v["persistentVolumeClaim"].is_null()),
        "{volumes:?}"
    );
    let cm = of_kind(&objs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "tailor-operator-config")
        .expect("operator config");
    let config: Value =
        serde_json::from_str(cm["data"]["operator.json"].as_str().expect("operator.json"))
            .expect("operator.json is JSON");
    let store = &config["artifactStore"];
    assert!(
        store["uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("s3://")),
        "{store}"
    );
    assert_eq!(store["credentialsSecret"], "tailor-store");
}
