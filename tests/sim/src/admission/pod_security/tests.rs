use super::*;
use serde_json::json;

fn restricted() -> LevelVersion {
    LevelVersion {
        level: Level::Restricted,
        minor: None,
    }
}

#[test]
fn a_plain_pod_violates_restricted_in_the_apiservers_words() {
    let spec = json!({"containers": [{"name": "c", "image": "x"}]});
    assert_eq!(
        describe(&evaluate(restricted(), &json!({}), &spec)),
        "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
}

#[test]
fn a_hardened_pod_passes_restricted_and_baseline_checks_come_first() {
    let hardened = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
    });
    assert!(evaluate(restricted(), &json!({}), &hardened).is_empty());
    let mut bad = hardened.clone();
    bad["hostNetwork"] = json!(true);
    bad["volumes"] = json!([{"name": "h", "hostPath": {"path": "/"}}]);
    bad["containers"][0]["securityContext"]["privileged"] = json!(true);
    bad["containers"][0]["ports"] =
        json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 90, "hostPort": 9090}]);
    assert_eq!(
        describe(&evaluate(restricted(), &json!({}), &bad)),
        "host namespaces (hostNetwork=true), hostPort (container \"c\" uses hostPorts 8080, 9090), \
             privileged (container \"c\" must not set securityContext.privileged=true), \
             restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")"
    );
    let baseline = LevelVersion {
        level: Level::Baseline,
        minor: None,
    };
    assert_eq!(
        describe(&evaluate(baseline, &json!({}), &bad)),
        "host namespaces (hostNetwork=true), hostPath volumes (volume \"h\"), hostPort (container \"c\" uses hostPorts 8080, 9090), \
             privileged (container \"c\" must not set securityContext.privileged=true)"
    );
}

#[test]
fn versions_select_the_checks_of_their_time() {
    // runAsUser=0 is a restricted violation from v1.23 on.
    let spec = json!({"securityContext": {"runAsUser": 0, "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
    let at = |minor| LevelVersion {
        level: Level::Restricted,
        minor: Some(minor),
    };
    assert!(evaluate(at(22), &json!({}), &spec).is_empty());
    assert_eq!(
        describe(&evaluate(at(23), &json!({}), &spec)),
        "runAsUser=0 (pod must not set runAsUser=0)"
    );
    assert_eq!(at(23).to_string(), "restricted:v1.23");
    // tcp_rmem became a safe sysctl in v1.32.
    let sysctl = json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_rmem", "value": "1"}]}, "containers": [{"name": "c"}]});
    let base = |minor| LevelVersion {
        level: Level::Baseline,
        minor,
    };
    assert_eq!(
        describe(&evaluate(base(Some(31)), &json!({}), &sysctl)),
        "forbidden sysctls (net.ipv4.tcp_rmem)"
    );
    assert!(evaluate(base(None), &json!({}), &sysctl).is_empty());
}

#[test]
fn namespace_labels_parse_as_upstream_and_bad_ones_are_named() {
    let (p, causes) = policy(&json!({"pod-security.kubernetes.io/enforce": "baseline"}));
    assert_eq!(p.enforce.to_string(), "baseline:latest");
    assert_eq!(
        p.warn.to_string(),
        "baseline:latest",
        "warn follows enforce"
    );
    assert!(causes.is_empty());
    let (p, causes) = policy(&json!({
        "pod-security.kubernetes.io/enforce": "strict",
        "pod-security.kubernetes.io/warn-version": "1.30",
    }));
    assert_eq!(p.enforce.level, Level::Restricted, "fails closed");
    let msgs: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    assert_eq!(
        msgs,
        [
            "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted",
            "metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: \"1.30\": must be \"latest\" or \"v1.x\"",
        ]
    );
}

#[test]
fn admit_refuses_pods_and_only_warns_for_templates() {
    let labels = json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.32"});
    let spec = json!({"containers": [{"name": "c"}]});
    let err = admit(&labels, &json!({}), &spec, true).expect_err("refused");
    assert!(
        err.starts_with(
            "violates PodSecurity \"restricted:v1.32\": allowPrivilegeEscalation != false"
        ),
        "{err}"
    );
    let warnings = admit(&labels, &json!({}), &spec, false).expect("warned only");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("would violate PodSecurity \"restricted:v1.32\": "));
    assert_eq!(admit(&json!({}), &json!({}), &spec, true), Ok(vec![]));
}

#[test]
fn existing_pods_are_summarised_per_reason_set() {
    let pod = |n: &str, owner: &str| {
        json!({"metadata": {"name": n, "ownerReferences": [{"uid": owner, "controller": true}]},
            "spec": {"containers": [{"name": "c", "securityContext": {"privileged": true}}]}})
    };
    let pods = [pod("b", "rs1"), pod("a", "rs1"), pod("c", "rs2")];
    let refs: Vec<&Value> = pods.iter().collect();
    let lv = LevelVersion {
        level: Level::Baseline,
        minor: None,
    };
    assert_eq!(
        existing_pod_warnings("ns", lv, &refs),
        [
            "existing pods in namespace \"ns\" violate the new PodSecurity enforce level \"baseline:latest\"",
            "a (and 2 other pods): privileged",
        ]
    );
}
