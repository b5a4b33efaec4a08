//! tailor-sim's admission and workload controllers driven with kubectl: Pod Security Admission
//! and what a refused pod does to its Job or ReplicaSet, Indexed Jobs behind a headless Service
//! (names resolved in the pods through their hosts files), podFailurePolicy.

mod common;

use std::time::Duration;

use common::{Sim, wait_for};
use serde_json::Value;

fn json(sim: &Sim, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&sim.ok(&a)).expect("kubectl JSON")
}

fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

const PLAIN_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec:\n  containers: [{name: c, image: busybox, command: [sh, -c, 'sleep 1000']}]\n";

const HARDENED_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: hardened}\nspec:\n  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'sleep 1000']\n    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n";

#[test]
fn pod_security_admission_enforces_namespace_levels_in_the_apiservers_words() {
    let sim = Sim::start(&[]);
    sim.ok(&["create", "namespace", "locked"]);
    let out = sim.kubectl(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"),
        "{err}"
    );
    // A pod already there: raising the level warns about it, as the apiserver does.
    sim.apply(&PLAIN_POD.replace(
        "metadata: {name: plain}",
        "metadata: {name: plain, namespace: locked}",
    ));
    let out = sim.kubectl(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{warned}");
    assert!(
        warned.contains("existing pods in namespace \"locked\" violate the new PodSecurity enforce level \"restricted:latest\"")
            && warned.contains("plain: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"),
        "{warned}"
    );
    // A pod that breaks the level is refused with the apiserver's message.
    let out = sim.kubectl_stdin(
        &["apply", "-n", "locked", "-f", "-"],
        &PLAIN_POD.replace("name: plain", "name: plain2"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "pods \"plain2\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        ),
        "{err}"
    );
    // A pod that meets it runs.
    let out = sim.kubectl_stdin(&["apply", "-n", "locked", "-f", "-"], HARDENED_POD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pinned version is named as such; baseline refuses host namespaces but not the rest.
    sim.ok(&[
        "label",
        "--overwrite",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=baseline",
        "pod-security.kubernetes.io/enforce-version=v1.30",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let out = sim.kubectl_stdin(
        &["apply", "-n", "locked", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hostnet}\nspec:\n  hostNetwork: true\n  containers: [{name: c, image: busybox, command: [sh, -c, 'sleep 1000']}]\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pods \"hostnet\" is forbidden: violates PodSecurity \"baseline:v1.30\": host namespaces (hostNetwork=true)"),
        "{err}"
    );
    // Allowed at baseline, warned at restricted (kubectl prints the warning).
    let out = sim.kubectl_stdin(
        &["apply", "-n", "locked", "-f", "-"],
        &PLAIN_POD.replace("name: plain", "name: plain3"),
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"),
        "{text}"
    );
}

#[test]
fn workloads_whose_pods_are_refused_say_so_as_kubernetes_does() {
    let sim = Sim::start(&[]);
    sim.ok(&["create", "namespace", "locked"]);
    sim.ok(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    // A Deployment's template is only warned about at admission ...
    let out = sim.kubectl_stdin(
        &["apply", "-n", "locked", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: busybox, command: [sh, -c, 'sleep 1000']}]\n",
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\""),
        "{text}"
    );
    // ... its pods are refused: ReplicaFailure on the ReplicaSet and the Deployment, and a
    // FailedCreate Event.
    let rs = wait_for(
        "the ReplicaSet to report ReplicaFailure",
        Duration::from_secs(60),
        || {
            let list = json(&sim, &["-n", "locked", "get", "rs", "-l", "app=web"]);
            let rs = list["items"].get(0)?.clone();
            condition(&rs, "ReplicaFailure").is_some().then_some(rs)
        },
    );
    let failure = condition(&rs, "ReplicaFailure").expect("condition");
    assert_eq!(failure["status"], "True");
    assert_eq!(failure["reason"], "FailedCreate");
    let msg = failure["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("pods \"web-")
            && msg.contains("is forbidden: violates PodSecurity \"restricted:latest\""),
        "{msg}"
    );
    let dep = wait_for(
        "the Deployment to show ReplicaFailure",
        Duration::from_secs(30),
        || {
            let d = json(&sim, &["-n", "locked", "get", "deployment", "web"]);
            condition(&d, "ReplicaFailure").is_some().then_some(d)
        },
    );
    assert_eq!(
        condition(&dep, "ReplicaFailure").expect("condition")["reason"],
        "FailedCreate"
    );
    let rs_name = rs["metadata"]["name"].as_str().unwrap_or("").to_string();
    let events = json(
        &sim,
        &[
            "-n",
            "locked",
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={rs_name}"),
        ],
    );
    let ev = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["reason"] == "FailedCreate")
        .unwrap_or_else(|| panic!("a FailedCreate Event: {events}"));
    assert_eq!(ev["type"], "Warning");
    assert!(
        ev["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Error creating: pods \"web-")),
        "{ev}"
    );
    // A Job: the FailedCreate Event; no pod, no condition.
    sim.apply("apiVersion: batch/v1\nkind: Job\nmetadata: {name: batch, namespace: locked}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: busybox, command: [sh, -c, 'true']}]\n");
    let ev = wait_for(
        "a FailedCreate Event on the Job",
        Duration::from_secs(60),
        || {
            let events = json(
                &sim,
                &[
                    "-n",
                    "locked",
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=batch,reason=FailedCreate",
                ],
            );
            events["items"].get(0).cloned()
        },
    );
    assert!(
        ev["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Error creating: pods \"batch-")
                && m.contains("violates PodSecurity")),
        "{ev}"
    );
    assert_eq!(ev["source"]["component"], "job-controller");
    // Lowering the level lets the pods be created: the failure condition goes.
    sim.ok(&[
        "label",
        "--overwrite",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    wait_for(
        "the Deployment to roll out once its pods are admitted",
        Duration::from_secs(120),
        || {
            let d = json(&sim, &["-n", "locked", "get", "deployment", "web"]);
            (condition(&d, "ReplicaFailure").is_none() && d["status"]["readyReplicas"] == 1)
                .then_some(())
        },
    );
}

#[test]
fn indexed_jobs_rendezvous_by_hostname_through_a_headless_service() {
    let sim = Sim::start(&[]);
    let marker = tempfile::tempdir().expect("marker dir");
    // Each pod: its index and hostname; once all three run (a barrier on a shared volume),
    // every peer's address by DNS name (the hosts file is rewritten as peers appear); then a
    // second barrier, so that no peer leaves (and drops out of the Service's endpoints) before
    // all have resolved it. Index 1 fails its first attempt.
    let barrier = |name: &str| {
        format!(
            "touch /marker/{name}-$i; n=0; until [ -e /marker/{name}-0 ] && [ -e /marker/{name}-1 ] && [ -e /marker/{name}-2 ]; do n=$((n+1)); [ $n -lt 900 ] || exit 8; sleep 0.1; done"
        )
    };
    let script = format!(
        "set -eu; i=$JOB_COMPLETION_INDEX; \
        echo index=$i host=$(hostname); \
        if [ $i = 1 ] && [ ! -e /marker/failed-once ]; then touch /marker/failed-once; exit 3; fi; \
        {}; \
        for p in 0 1 2; do \
          n=0; until getent hosts ring-$p.ring >/dev/null; do n=$((n+1)); [ $n -lt 900 ] || exit 9; sleep 0.1; done; \
          echo peer $p $(getent hosts ring-$p.ring | cut -d\" \" -f1) $(getent hosts ring-$p.ring.default.svc.cluster.local | cut -d\" \" -f1); \
        done; \
        echo api $(getent hosts api | cut -d\" \" -f1); \
        {}",
        barrier("up"),
        barrier("done")
    );
    sim.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ring}}\nspec:\n  clusterIP: None\n  publishNotReadyAddresses: true\n  selector: {{batch.kubernetes.io/job-name: ring}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  selector: {{app: nothing}}\n  ports: [{{port: 80}}]\n---\napiVersion: batch/v1\nkind: Job\nmetadata: {{name: ring}}\nspec:\n  completionMode: Indexed\n  completions: 3\n  parallelism: 3\n  backoffLimit: 2\n  template:\n    spec:\n      subdomain: ring\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: busybox\n        command: [sh, -c, '{script}']\n        volumeMounts: [{{name: marker, mountPath: /marker}}]\n      volumes: [{{name: marker, hostPath: {{path: {}}}}}]\n",
        marker.path().display()
    ));
    let job = wait_for(
        "the Indexed Job to complete",
        Duration::from_secs(180),
        || {
            let j = json(&sim, &["get", "job", "ring"]);
            (condition(&j, "Complete").is_some_and(|c| c["status"] == "True")
                || condition(&j, "Failed").is_some_and(|c| c["status"] == "True"))
            .then_some(j)
        },
    );
    let pods = json(
        &sim,
        &["get", "pods", "-l", "batch.kubernetes.io/job-name=ring"],
    );
    let st = &job["status"];
    assert!(
        condition(&job, "Complete").is_some(),
        "{st}\n{}",
        sim.ok(&[
            "logs",
            "-l",
            "batch.kubernetes.io/job-name=ring",
            "--tail=20"
        ])
    );
    assert_eq!(st["completedIndexes"], "0-2", "{st}");
    assert_eq!(st["succeeded"], 3, "{st}");
    assert_eq!(st["failed"], 1, "index 1 failed once and was retried: {st}");
    let ip_of = |index: &str| -> String {
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == index
                    && p["status"]["phase"] == "Succeeded"
            })
            .and_then(|p| p["status"]["podIP"].as_str())
            .unwrap_or("?")
            .to_string()
    };
    let api_ip = sim.jsonpath(&["get", "svc", "api"], "{.spec.clusterIP}");
    for p in pods["items"].as_array().into_iter().flatten() {
        if p["status"]["phase"] != "Succeeded" {
            continue;
        }
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap_or("?");
        assert!(name.starts_with(&format!("ring-{index}-")), "{name}");
        assert_eq!(p["spec"]["hostname"], format!("ring-{index}"));
        let logs = sim.ok(&["logs", name]);
        assert!(
            logs.contains(&format!("index={index} host=ring-{index}")),
            "{logs}"
        );
        for i in ["0", "1", "2"] {
            let ip = ip_of(i);
            assert!(
                logs.contains(&format!("peer {i} {ip} {ip}")),
                "{name} resolves ring-{i}.ring and its FQDN to {ip}: {logs}"
            );
        }
        assert!(logs.contains(&format!("api {api_ip}")), "{logs}");
    }
}

#[test]
fn pod_failure_policy_fails_the_job_on_a_matching_exit_code() {
    let sim = Sim::start(&[]);
    sim.apply("apiVersion: batch/v1\nkind: Job\nmetadata: {name: fatal}\nspec:\n  backoffLimit: 5\n  podFailurePolicy:\n    rules:\n    - {action: FailJob, onExitCodes: {containerName: main, operator: In, values: [42]}}\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: main, image: busybox, command: [sh, -c, 'exit 42']}]\n");
    let job = wait_for("the Job to fail", Duration::from_secs(120), || {
        let j = json(&sim, &["get", "job", "fatal"]);
        condition(&j, "Failed").is_some().then_some(j)
    });
    let failed = condition(&job, "Failed").expect("Failed");
    assert_eq!(failed["reason"], "PodFailurePolicy");
    let msg = failed["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("Container main for pod default/fatal-")
            && msg.ends_with("failed with exit code 42 matching FailJob rule at index 0"),
        "{msg}"
    );
    assert_eq!(job["status"]["failed"], 1, "no retry: {}", job["status"]);
    // podFailurePolicy needs restartPolicy Never.
    let out = sim.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: wrong}\nspec:\n  podFailurePolicy: {rules: [{action: Ignore, onPodConditions: [{type: DisruptionTarget}]}]}\n  template:\n    spec:\n      restartPolicy: OnFailure\n      containers: [{name: main, image: busybox}]\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified"),
        "{err}"
    );
}

/// A CRD whose scale subresource keeps its replicas at non-default paths.
const POOL_CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: pools.example.tailor.dev}\nspec:\n  group: example.tailor.dev\n  scope: Namespaced\n  names: {kind: Pool, plural: pools, singular: pool}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    subresources:\n      status: {}\n      scale: {specReplicasPath: .spec.workers, statusReplicasPath: .status.ready, labelSelectorPath: .status.selector}\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {type: object, properties: {workers: {type: integer, minimum: 0}}}\n          status: {type: object, properties: {ready: {type: integer}, selector: {type: string}}}\n";

#[test]
fn pdbs_network_policies_and_hpas_are_served_and_hpa_targets_scale() {
    let sim = Sim::start(&[]);
    sim.apply(POOL_CRD);
    sim.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd/pools.example.tailor.dev",
    ]);
    sim.apply("apiVersion: example.tailor.dev/v1\nkind: Pool\nmetadata: {name: gpus}\nspec: {workers: 2}\n");
    sim.ok(&[
        "patch",
        "pool",
        "gpus",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":2,"selector":"app=gpus"}}"#,
    ]);
    sim.apply("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: router}\nspec:\n  minAvailable: 1\n  selector: {matchLabels: {app: router}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-router}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {app: router}}}]}]\n---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: gpus}\nspec:\n  scaleTargetRef: {apiVersion: example.tailor.dev/v1, kind: Pool, name: gpus}\n  minReplicas: 1\n  maxReplicas: 8\n  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}}]\n");
    // kubectl get prints each kind's columns.
    let table = sim.ok(&["get", "pdb,netpol,hpa"]);
    for line in [
        "poddisruptionbudget.policy/router",
        "networkpolicy.networking.k8s.io/only-router",
        "horizontalpodautoscaler.autoscaling/gpus",
        "app=server",
        "Pool/gpus",
        "<unknown>/70%",
    ] {
        assert!(table.contains(line), "{line:?} in:\n{table}");
    }
    // Watched like any kind.
    for path in [
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
    ] {
        let events = sim.ok(&[
            "get",
            "--raw",
            &format!("{path}?watch=true&resourceVersion=0&timeoutSeconds=1"),
        ]);
        assert!(events.contains("\"type\":\"ADDED\""), "{path}: {events}");
    }
    // The HPA's target resolves through its scale subresource, at the CRD's paths.
    let hpa = json(&sim, &["get", "hpa", "gpus"]);
    let target = &hpa["spec"]["scaleTargetRef"];
    let scale_path = format!(
        "/apis/{}/namespaces/default/pools/{}/scale",
        target["apiVersion"].as_str().unwrap_or(""),
        target["name"].as_str().unwrap_or("")
    );
    let scale: Value =
        serde_json::from_str(&sim.ok(&["get", "--raw", &scale_path])).expect("Scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=gpus");
    // kubectl scale, and a merge patch of the subresource, write spec.workers.
    sim.ok(&["scale", "pool/gpus", "--replicas=5"]);
    assert_eq!(
        sim.jsonpath(&["get", "pool", "gpus"], "{.spec.workers}"),
        "5"
    );
    sim.ok(&[
        "patch",
        "pool",
        "gpus",
        "--subresource=scale",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ]);
    assert_eq!(
        sim.jsonpath(&["get", "pool", "gpus"], "{.spec.workers}"),
        "3"
    );
    let out = sim.kubectl(&["scale", "pool/gpus", "--replicas=-1"]);
    assert!(!out.status.success());
    // Deleted like any kind.
    sim.ok(&["delete", "pdb,netpol,hpa", "--all"]);
    assert_eq!(sim.ok(&["get", "pdb,netpol,hpa", "-o", "name"]).trim(), "");
}
