//! tailor-sim driven by the real kubectl: CRDs and examples, admission, printing, watch,
//! patches, finalizers, RBAC, Jobs on simulated GPUs, Deployments behind a Service, restart.
//!
//! Size (over 700 lines, on purpose): one suite, so one simulator and one kubectl configuration serve
//! every test of the process.

mod common;
#[path = "../../../api/tests/fixtures/invalid_manifests.rs"]
mod invalid_manifests;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Sim, repo_root, wait_for};
use serde_json::{Value, json};

const WIDGET_CRD: &str = include_str!("fixtures/widget-crd.yaml");

fn install_widgets(sim: &Sim) {
    sim.apply(WIDGET_CRD);
    sim.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=120s",
        "crd/widgets.example.tailor.dev",
    ]);
}

#[test]
fn crds_and_every_example_apply_client_and_server_side() {
    let sim = Sim::start(&[]);
    // As a user would: every file in the directory (its kustomization has no .yaml suffix).
    let crds = repo_root().join("crds");
    sim.ok(&["apply", "-f", crds.to_str().unwrap_or("crds")]);
    sim.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=120s",
        "crd",
        "--all",
    ]);
    let names = sim.ok(&["get", "crd", "-o", "name"]);
    for crd in [
        "datasets.tailor.dev",
        "finetunejobs.tailor.dev",
        "loraadapters.tailor.dev",
        "modeldeployments.tailor.dev",
    ] {
        assert!(names.contains(crd), "{crd} missing from {names}");
    }
    // The quickstart is a kustomization; other examples are plain manifests.
    sim.ok(&["apply", "-k", "examples/quickstart"]);
    sim.ok(&["apply", "--server-side", "-k", "examples/quickstart"]);
    for entry in std::fs::read_dir(repo_root().join("examples"))
        .expect("examples dir")
        .flatten()
    {
        let p = entry.path();
        if p.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let f = p.to_string_lossy().into_owned();
            sim.ok(&["apply", "-f", &f]);
            sim.ok(&["apply", "--server-side", "-f", &f]);
        }
    }
    // Printer columns and the `tailor` category.
    let table = sim.ok(&["get", "tailor", "-A"]);
    assert!(table.contains("dataset.tailor.dev/support-chat"), "{table}");
    assert!(table.contains("PHASE"), "printer columns missing: {table}");
    let yaml = sim.ok(&[
        "get",
        "dset",
        "support-chat",
        "-n",
        "tailor-demo",
        "-o",
        "yaml",
    ]);
    assert!(
        yaml.contains("kind: Dataset") && yaml.contains("generation: 1"),
        "{yaml}"
    );
    // Schema defaults were applied at admission.
    let split = sim.jsonpath(
        &["get", "dset", "support-chat", "-n", "tailor-demo"],
        "{.spec.preparation.split.test}",
    );
    assert_eq!(split, "0", "defaulted split.test");
    // kubectl explain reads the CRD schema through OpenAPI v3.
    let explain = sim.ok(&["explain", "finetunejob.spec.lora.rank"]);
    assert!(explain.contains("FIELD: rank"), "{explain}");
    // The demo overlay of the quickstart, both ways.
    sim.ok(&["apply", "-k", "examples/demo"]);
    sim.ok(&["apply", "--server-side", "-k", "examples/demo"]);
    // kubectl patch of each kind, merge and JSON patch (strategic merge patch is for built-in
    // kinds only: see the widget test and the Deployment below).
    for (kind, name, merge, json, path, want) in [
        (
            "dataset",
            "support-chat",
            r#"{"spec":{"preparation":{"minExamples":50}}}"#,
            r#"[{"op":"replace","path":"/spec/format","value":"completion"}]"#,
            "{.spec.preparation.minExamples} {.spec.format}",
            "50 completion",
        ),
        (
            "finetunejob",
            "support-v1",
            r#"{"spec":{"lora":{"alpha":32}}}"#,
            r#"[{"op":"replace","path":"/spec/hyperparameters/epochs","value":3}]"#,
            "{.spec.lora.alpha} {.spec.hyperparameters.epochs}",
            "32 3",
        ),
        (
            "modeldeployment",
            "support",
            r#"{"spec":{"replicas":3}}"#,
            r#"[{"op":"replace","path":"/spec/adapters/0/name","value":"support2"}]"#,
            "{.spec.replicas} {.spec.adapters[0].name}",
            "3 support2",
        ),
        (
            "loraadapter",
            "support-imported",
            r#"{"spec":{"alpha":32}}"#,
            r#"[{"op":"replace","path":"/spec/rank","value":16}]"#,
            "{.spec.alpha} {.spec.rank}",
            "32 16",
        ),
    ] {
        let generation = |sim: &Sim| {
            sim.jsonpath(
                &["get", kind, name, "-n", "tailor-demo"],
                "{.metadata.generation}",
            )
            .parse::<i64>()
            .unwrap_or(0)
        };
        let before = generation(&sim);
        for (ty, patch) in [("merge", merge), ("json", json)] {
            sim.ok(&[
                "patch",
                kind,
                name,
                "-n",
                "tailor-demo",
                "--type",
                ty,
                "-p",
                patch,
            ]);
        }
        assert_eq!(
            sim.jsonpath(&["get", kind, name, "-n", "tailor-demo"], path),
            want,
            "{kind}"
        );
        assert_eq!(generation(&sim), before + 2, "{kind} generation");
    }
    // Strategic merge patch of a built-in kind merges containers by name.
    sim.apply("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: idle}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: idle}}\n  template:\n    metadata: {labels: {app: idle}}\n    spec:\n      containers: [{name: a, image: testpod}, {name: b, image: testpod}]\n");
    sim.ok(&[
        "patch",
        "deployment",
        "idle",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"b","env":[{"name":"MODE","value":"x"}]}]}}}}"#,
    ]);
    assert_eq!(
        sim.jsonpath(
            &["get", "deployment", "idle"],
            "{.spec.template.spec.containers[*].name} {.spec.template.spec.containers[1].image} {.spec.template.spec.containers[1].env[0].value}"
        ),
        "a b testpod x"
    );
}

#[test]
fn invalid_manifests_are_rejected_by_kubectl_apply_naming_the_field() {
    let sim = Sim::start(&[]);
    sim.ok(&[
        "apply",
        "-k",
        repo_root().join("crds").to_str().unwrap_or("crds"),
    ]);
    sim.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=120s",
        "crd",
        "--all",
    ]);
    // The table both admission suites share (api/tests/fixtures/invalid-manifests.yaml), here
    // rejected by the simulated apiserver: structural schema or CEL, with the field named and
    // the reason in the apiserver's words.
    let table = invalid_manifests::table();
    let mut failures = vec![];
    for (i, row) in table.rows.iter().enumerate() {
        let name = format!("invalid-{i}");
        let (obj, old) = row.manifests(&table, &name);
        if let Some(old) = old {
            sim.apply(&old.to_string());
        }
        let out = sim.kubectl_stdin(&["apply", "-f", "-"], &obj.to_string());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            failures.push(format!("{}: accepted", row.case));
        } else if !err.contains("is invalid")
            // kubectl prints one cause after `is invalid: `, several as `* cause` lines.
            || !err
                .lines()
                .map(|l| l.split_once(" is invalid: ").map_or(l, |(_, e)| e))
                .any(|e| row.sim.matches(e.trim_start_matches("* ")))
        {
            failures.push(format!(
                "{}: error does not name {} with {:?}: {err}",
                row.case, row.sim.field, row.sim.says
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Unknown fields: kubectl's strict field validation gets the apiserver's decoding error.
    let bad = table.manifest(
        "Dataset",
        "d",
        &json!({"source": {"inline": "{}"}, "colour": "blue"}),
    );
    let out = sim.kubectl_stdin(&["apply", "-f", "-"], &bad.to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field \"spec.colour\""),
        "{err}"
    );
}

#[test]
fn widget_lifecycle_get_watch_patch_wait_finalizers() {
    let sim = Sim::start(&[]);
    install_widgets(&sim);
    // kubectl get -w sees later changes.
    let mut watch = Command::new("kubectl")
        .args(["get", "widgets", "-w", "-l", "team=a"])
        .env("KUBECONFIG", &sim.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("watch stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    sim.apply("apiVersion: example.tailor.dev/v1\nkind: Widget\nmetadata:\n  name: w1\n  labels: {team: a}\nspec:\n  size: 3\n  uri: file:///x\n");
    sim.apply("apiVersion: example.tailor.dev/v1\nkind: Widget\nmetadata:\n  name: w2\n  labels: {team: b}\nspec:\n  size: 4\n  configMap: cm\n");
    // Defaults, generation, printer columns, label selection.
    assert_eq!(
        sim.jsonpath(&["get", "widget", "w1"], "{.spec.color}"),
        "red"
    );
    let table = sim.ok(&["get", "wd", "-l", "team=a"]);
    assert!(
        table.contains("SIZE") && table.contains("w1") && !table.contains("w2"),
        "{table}"
    );
    // Every patch type kubectl offers (strategic merge is refused for CRs, as in Kubernetes).
    sim.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":5}}"#,
    ]);
    sim.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/size","value":6}]"#,
    ]);
    let smp = sim.kubectl(&["patch", "widget", "w1", "-p", r#"{"spec":{"size":7}}"#]);
    assert!(
        !smp.status.success(),
        "strategic merge patch on a CR must be refused"
    );
    assert_eq!(
        sim.jsonpath(
            &["get", "widget", "w1"],
            "{.spec.size} {.metadata.generation}"
        ),
        "6 3"
    );
    // Metadata-only changes do not bump the generation.
    sim.ok(&["label", "widget", "w1", "extra=yes"]);
    assert_eq!(
        sim.jsonpath(&["get", "widget", "w1"], "{.metadata.generation}"),
        "3"
    );
    // Status through the status subresource; kubectl wait on a condition.
    sim.ok(&["patch", "widget", "w1", "--subresource=status", "--type", "merge", "-p", r#"{"status":{"phase":"Ready","conditions":[{"type":"Ready","status":"True","reason":"Done","message":"ok","lastTransitionTime":"2025-01-01T00:00:00Z"}]}}"#]);
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=20s",
        "widget/w1",
    ]);
    let table = sim.ok(&["get", "widget", "w1"]);
    assert!(table.contains("Ready"), "{table}");
    // Status is ignored on the main resource.
    sim.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"phase":"Hacked"}}"#,
    ]);
    assert_eq!(
        sim.jsonpath(&["get", "widget", "w1"], "{.status.phase}"),
        "Ready"
    );
    // Optimistic concurrency: an update with a stale resourceVersion is a 409.
    let stale = json!({"apiVersion": "example.tailor.dev/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": "default", "resourceVersion": "1"}, "spec": {"size": 9, "uri": "file:///x"}});
    let out = sim.kubectl_stdin(&["replace", "-f", "-"], &stale.to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the object has been modified"), "{err}");
    // Server-side apply conflicts with another manager unless forced.
    let ssa = "apiVersion: example.tailor.dev/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 8\n  uri: file:///x\n";
    let out = sim.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        ssa,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("conflict"), "{err}");
    let out = sim.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=other",
            "-f",
            "-",
        ],
        ssa,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.jsonpath(&["get", "widget", "w1"], "{.spec.size}"), "8");
    // The watch saw w1 (and not w2) change.
    let lines: Vec<String> = wait_for("watch output", Duration::from_secs(120), || {
        let got: Vec<String> = rx.try_iter().collect();
        let n = got.iter().filter(|l| l.contains("w1")).count();
        if n >= 2 { Some(got) } else { None }
    });
    assert!(lines.iter().all(|l| !l.contains("w2")), "{lines:?}");
    let _ = watch.kill();
    let _ = watch.wait();
    // Deletion waits on a finalizer.
    sim.ok(&[
        "patch",
        "widget",
        "w2",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.tailor.dev/hold"]}}"#,
    ]);
    sim.ok(&["delete", "widget", "w2", "--wait=false"]);
    let ts = sim.jsonpath(&["get", "widget", "w2"], "{.metadata.deletionTimestamp}");
    assert!(
        !ts.is_empty(),
        "deletionTimestamp set while the finalizer holds it"
    );
    let mut waiter = Command::new("kubectl")
        .args(["delete", "widget", "w2", "--timeout=120s"])
        .env("KUBECONFIG", &sim.kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl delete");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.try_wait().expect("poll").is_none(),
        "kubectl delete returned while the finalizer was still there"
    );
    sim.ok(&[
        "patch",
        "widget",
        "w2",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let status = waiter.wait().expect("kubectl delete");
    assert!(status.success());
    assert!(!sim.kubectl(&["get", "widget", "w2"]).status.success());
}

#[test]
fn serviceaccount_without_create_jobs_gets_403() {
    let sim = Sim::start(&[]);
    sim.ok(&["create", "namespace", "team"]);
    sim.ok(&["create", "serviceaccount", "runner", "-n", "team"]);
    sim.ok(&[
        "create",
        "role",
        "pods-only",
        "-n",
        "team",
        "--verb=get,list,watch,create",
        "--resource=pods",
        "--resource=jobs.batch",
        "--verb=get",
    ]);
    sim.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader, namespace: team}\nrules:\n- apiGroups: [\"batch\"]\n  resources: [\"jobs\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"get\", \"list\"]\n");
    sim.ok(&[
        "create",
        "rolebinding",
        "runner-reader",
        "-n",
        "team",
        "--role=reader",
        "--serviceaccount=team:runner",
    ]);
    let token = sim.ok(&["create", "token", "runner", "-n", "team"]);
    let token = token.trim();
    let as_sa = |args: &[&str]| {
        let mut a = vec!["--token", token];
        a.extend_from_slice(args);
        sim.kubectl(&a)
    };
    assert!(as_sa(&["get", "jobs", "-n", "team"]).status.success());
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j, namespace: team}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: busybox, command: [sh, -c, 'true']}]\n";
    let mut cmd = Command::new("kubectl");
    cmd.args(["--token", token, "create", "-f", "-"])
        .env("KUBECONFIG", &sim.kubeconfig)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), job.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"jobs.batch is forbidden: User "system:serviceaccount:team:runner" cannot create resource "jobs" in API group "batch" in the namespace "team""#),
        "{err}"
    );
    let err =
        String::from_utf8_lossy(&as_sa(&["get", "secrets", "-n", "team"]).stderr).into_owned();
    assert!(err.contains(r#"secrets is forbidden: User "system:serviceaccount:team:runner" cannot list resource "secrets" in API group "" in the namespace "team""#), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&as_sa(&["auth", "can-i", "create", "jobs", "-n", "team"]).stdout)
            .trim(),
        "no"
    );
    // A bad token is 401.
    let out = sim.kubectl(&["--token", "not-a-token", "get", "pods"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthorized"));
}

#[test]
fn gpu_jobs_schedule_run_and_report_termination_messages() {
    let sim = Sim::start(&["--nodes", "2", "--gpus-per-node", "2"]);
    let job = |name: &str, gpus: u32, args: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: registry.example/tailor/testpod:v1\n        args: {args}\n        env:\n        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}\n        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}\n        - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}}}\n        - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}\n        resources:\n          limits: {{nvidia.com/gpu: {gpus}}}\n"
        )
    };
    sim.ok(&["create", "configmap", "cfg", "--from-literal=greeting=hi"]);
    sim.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    sim.apply(&job("too-big", 3, "[exit, '0', never]"));
    sim.apply(&job("fits", 1, r#"[exit, "0", '{"validationLoss":1.25}']"#));
    sim.ok(&[
        "wait",
        "--for=condition=complete",
        "--timeout=180s",
        "job/fits",
    ]);
    let msg = sim.jsonpath(
        &["get", "pods", "-l", "job-name=fits"],
        "{.items[0].status.containerStatuses[0].state.terminated.message}",
    );
    assert_eq!(msg, r#"{"validationLoss":1.25}"#);
    let logs = sim.ok(&["logs", "job/fits"]);
    assert!(
        logs.contains("NVIDIA_VISIBLE_DEVICES=0") || logs.contains("NVIDIA_VISIBLE_DEVICES=1"),
        "{logs}"
    );
    assert!(
        logs.contains("GREETING=hi") && logs.contains("PASSWORD=s3cret"),
        "{logs}"
    );
    assert!(
        logs.contains("POD_NAME=fits-") && logs.contains("POD_IP=127."),
        "{logs}"
    );
    // Labels the Job controller sets.
    let labels = sim.jsonpath(
        &["get", "pods", "-l", "batch.kubernetes.io/job-name=fits"],
        "{.items[0].metadata.labels}",
    );
    assert!(
        labels.contains("controller-uid") && labels.contains("\"job-name\":\"fits\""),
        "{labels}"
    );
    // The 3-GPU job stays Pending with the scheduler's reason.
    let cond = wait_for("Unschedulable condition", Duration::from_secs(90), || {
        let c = sim.jsonpath(
            &["get", "pods", "-l", "job-name=too-big"],
            r#"{.items[0].status.conditions[?(@.type=="PodScheduled")].message}"#,
        );
        (!c.is_empty()).then_some(c)
    });
    assert_eq!(
        cond,
        "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    );
    let reason = sim.jsonpath(
        &["get", "pods", "-l", "job-name=too-big"],
        r#"{.items[0].status.conditions[?(@.type=="PodScheduled")].reason}"#,
    );
    assert_eq!(reason, "Unschedulable");
    assert_eq!(
        sim.jsonpath(
            &["get", "pods", "-l", "job-name=too-big"],
            "{.items[0].status.phase}"
        ),
        "Pending"
    );
    // A failing job hits its backoff limit.
    sim.apply(&job("fails", 0, "[exit, '3', boom]"));
    sim.ok(&[
        "wait",
        "--for=condition=failed",
        "--timeout=180s",
        "job/fails",
    ]);
    assert_eq!(
        sim.jsonpath(
            &["get", "job", "fails"],
            r#"{.status.conditions[?(@.type=="Failed")].reason}"#
        ),
        "BackoffLimitExceeded"
    );
    // Pods name an existing PriorityClass (the Priority admission plugin).
    let out = sim.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: urgent}\nspec:\n  priorityClassName: high\n  containers: [{name: c, image: busybox, command: [sh, -c, 'true']}]\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no PriorityClass with name high was found"),
        "{err}"
    );
    sim.apply("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n");
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: urgent}\nspec:\n  priorityClassName: high\n  containers: [{name: c, image: busybox, command: [sh, -c, 'true']}]\n");
    assert_eq!(
        sim.jsonpath(&["get", "pod", "urgent"], "{.spec.priority}"),
        "1000"
    );
    // An unmapped image is ErrImagePull.
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: nope}\nspec:\n  containers: [{name: c, image: ghcr.io/unknown/thing:1}]\n");
    wait_for("ErrImagePull", Duration::from_secs(90), || {
        (sim.jsonpath(
            &["get", "pod", "nope"],
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "ErrImagePull")
            .then_some(())
    });
}

#[test]
fn deployment_pods_become_ready_by_probe_and_service_forwards() {
    let sim = Sim::start(&[]);
    let dep = |version: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}, annotations: {{version: '{version}'}}}}\n    spec:\n      containers:\n      - name: web\n        image: testpod\n        args: [serve, '8080']\n        env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]\n        ports: [{{name: http, containerPort: 8080}}]\n        readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}\n        livenessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 2}}\n        volumeMounts: [{{name: cfg, mountPath: /etc/web}}]\n      volumes: [{{name: cfg, configMap: {{name: web-cfg}}}}]\n"
        )
    };
    sim.ok(&["create", "configmap", "web-cfg", "--from-literal=mode=one"]);
    sim.apply(&dep("1"));
    sim.apply("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n");
    sim.ok(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    assert_eq!(
        sim.jsonpath(
            &["get", "deploy", "web"],
            "{.status.readyReplicas}/{.status.availableReplicas}"
        ),
        "2/2"
    );
    let hash = sim.jsonpath(
        &["get", "rs", "-l", "app=web"],
        "{.items[0].metadata.labels.pod-template-hash}",
    );
    assert!(!hash.is_empty());
    // The Service's ClusterIP forwards to a ready pod.
    let ip = sim.jsonpath(&["get", "svc", "web"], "{.spec.clusterIP}");
    let body = wait_for("service to answer", Duration::from_secs(120), || {
        http_get(&format!("{ip}:80"), "/hello")
    });
    assert!(
        body.contains("hello from web-") && body.contains("path /hello"),
        "{body}"
    );
    let slices = sim.jsonpath(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ],
        "{.items[0].endpoints[*].conditions.ready}",
    );
    assert_eq!(slices, "true true");
    // Rolling replacement: a template change makes a new ReplicaSet and replaces every pod.
    sim.apply(&dep("2"));
    sim.ok(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    wait_for("old pods to go", Duration::from_secs(120), || {
        let hashes = sim.jsonpath(
            &["get", "pods", "-l", "app=web"],
            "{.items[*].metadata.labels.pod-template-hash}",
        );
        let hs: Vec<&str> = hashes.split_whitespace().collect();
        (hs.len() == 2 && hs.iter().all(|h| *h != hash)).then_some(())
    });
    let cond = sim.jsonpath(
        &["get", "deploy", "web"],
        r#"{.status.conditions[?(@.type=="Progressing")].reason}"#,
    );
    assert_eq!(cond, "NewReplicaSetAvailable");
    let old_rs = sim.jsonpath(
        &["get", "rs", "-l", &format!("pod-template-hash={hash}")],
        "{.items[0].spec.replicas}",
    );
    assert_eq!(old_rs, "0");
    // Volumes and the ServiceAccount token at their real paths (the pod's own mount namespace),
    // and in-cluster API access with them, as kube-rs' in-cluster config does it.
    sim.ok(&[
        "create",
        "clusterrolebinding",
        "default-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: files}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: testpod\n    args: [cat, /etc/web/mode, /var/run/secrets/kubernetes.io/serviceaccount/namespace]\n    volumeMounts: [{name: cfg, mountPath: /etc/web}]\n  volumes: [{name: cfg, configMap: {name: web-cfg}}]\n");
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: incluster}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: bitnami/kubectl:1.32\n    command: [kubectl, get, pods, -o, name]\n");
    for p in ["files", "incluster"] {
        wait_for("pod to finish", Duration::from_secs(120), || {
            (sim.jsonpath(&["get", "pod", p], "{.status.phase}") == "Succeeded").then_some(())
        });
    }
    let files = sim.ok(&["logs", "files"]);
    assert!(
        files.contains("/etc/web/mode: one") && files.contains("serviceaccount/namespace: default"),
        "{files}"
    );
    let listed = sim.ok(&["logs", "incluster"]);
    assert!(
        listed.contains("pod/incluster") && listed.contains("pod/web-"),
        "{listed}"
    );
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.contains("200 OK").then_some(out)
}

/// Pods matching a label selector, as JSON.
fn pods(sim: &Sim, selector: &str) -> Vec<Value> {
    let out = sim.ok(&["get", "pods", "-l", selector, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn names_and_uids(ps: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = ps
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A restart is a node reboot: objects are kept, the same pods run their containers again
/// (restartCount + 1) and become Ready by probe, a running Job pod that may not restart fails
/// with ContainerStatusUnknown and is replaced exactly once, completed pods stay completed.
#[test]
fn state_survives_a_restart_and_pods_are_recreated() {
    let mut sim = Sim::start(&[]);
    install_widgets(&sim);
    sim.apply("apiVersion: example.tailor.dev/v1\nkind: Widget\nmetadata: {name: keep}\nspec: {size: 2, uri: 'file:///k'}\n");
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: server}\nspec:\n  containers:\n  - name: c\n    image: testpod\n    args: [serve, '8081']\n    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]\n    readinessProbe: {httpGet: {path: /, port: 8081}, periodSeconds: 1}\n");
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: onfailure}\nspec:\n  restartPolicy: OnFailure\n  terminationGracePeriodSeconds: 1\n  containers: [{name: c, image: busybox, command: [sh, -c, 'exec sleep 3600']}]\n");
    sim.apply("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: web\n        image: testpod\n        args: [serve, '8080']\n        env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]\n        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}\n");
    sim.apply("apiVersion: batch/v1\nkind: Job\nmetadata: {name: long}\nspec:\n  backoffLimit: 3\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers: [{name: c, image: busybox, command: [sh, -c, 'exec sleep 3600']}]\n");
    sim.apply("apiVersion: batch/v1\nkind: Job\nmetadata: {name: done}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: busybox, command: [sh, -c, 'echo finished']}]\n");
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=180s",
        "pod/server",
        "pod/onfailure",
    ]);
    sim.ok(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    sim.ok(&[
        "wait",
        "--for=condition=Complete",
        "--timeout=180s",
        "job/done",
    ]);
    let long_pod = wait_for(
        "the long job's pod to run",
        Duration::from_secs(120),
        || {
            let ps = pods(&sim, "job-name=long");
            (ps.len() == 1
                && ps[0]["status"]["containerStatuses"][0]["state"]["running"].is_object())
            .then(|| ps[0].clone())
        },
    );
    let web_before = names_and_uids(&pods(&sim, "app=web"));
    assert_eq!(web_before.len(), 2, "{web_before:?}");
    let done_before = pods(&sim, "job-name=done");
    assert_eq!(done_before.len(), 1);
    let uid = sim.jsonpath(&["get", "widget", "keep"], "{.metadata.uid}");
    let server_uid = sim.jsonpath(&["get", "pod", "server"], "{.metadata.uid}");

    sim.restart();

    assert_eq!(
        sim.jsonpath(&["get", "widget", "keep"], "{.metadata.uid}"),
        uid
    );
    // The Job's running pod could not restart (restartPolicy Never): it failed as the kubelet
    // reports a container it lost, and the Job replaced it once.
    let long_name = long_pod["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (failed, replacement) = wait_for(
        "the long job to count its lost pod as failed and replace it",
        Duration::from_secs(120),
        || {
            let ps = pods(&sim, "job-name=long");
            assert!(ps.len() <= 2, "more than one replacement: {ps:#?}");
            let failed = ps
                .iter()
                .find(|p| p["metadata"]["name"] == long_name.as_str())?
                .clone();
            let replacement = ps
                .iter()
                .find(|p| p["metadata"]["name"] != long_name.as_str())?
                .clone();
            let job = sim.jsonpath(&["get", "job", "long"], "{.status.failed}/{.status.active}");
            (failed["status"]["phase"] == "Failed"
                && replacement["status"]["phase"] == "Running"
                && job == "1/1")
                .then_some((failed, replacement))
        },
    );
    assert_eq!(failed["metadata"]["uid"], long_pod["metadata"]["uid"]);
    let term = &failed["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 137, "{term}");
    assert_eq!(term["reason"], "ContainerStatusUnknown", "{term}");
    assert_eq!(
        replacement["status"]["containerStatuses"][0]["restartCount"],
        0
    );
    // The Deployment keeps its pods: the same two, run again, Ready by probe again.
    wait_for(
        "the deployment's pods to run again and become ready",
        Duration::from_secs(120),
        || {
            let ps = pods(&sim, "app=web");
            assert_eq!(
                names_and_uids(&ps),
                web_before,
                "the deployment's pods changed"
            );
            let again = ps
                .iter()
                .all(|p| pod_ready(p) && p["status"]["containerStatuses"][0]["restartCount"] == 1);
            let ready = sim.jsonpath(&["get", "deploy", "web"], "{.status.readyReplicas}");
            (again && ready == "2").then_some(())
        },
    );
    let lost =
        &pods(&sim, "app=web")[0]["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(lost["reason"], "ContainerStatusUnknown", "{lost}");
    assert_eq!(
        sim.jsonpath(
            &["get", "rs", "-l", "app=web"],
            "{.items[*].status.replicas}"
        ),
        "2"
    );
    // Bare pods that may restart run again in place.
    for p in ["server", "onfailure"] {
        sim.ok(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=120s",
            &format!("pod/{p}"),
        ]);
        assert_eq!(
            sim.jsonpath(
                &["get", "pod", p],
                "{.status.containerStatuses[0].restartCount}"
            ),
            "1",
            "pod {p}"
        );
    }
    assert_eq!(
        sim.jsonpath(&["get", "pod", "server"], "{.metadata.uid}"),
        server_uid
    );
    let events = sim.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=server,reason=SandboxChanged",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "no SandboxChanged event");
    let ip = sim.jsonpath(&["get", "pod", "server"], "{.status.podIP}");
    let body = wait_for(
        "pod to answer after restart",
        Duration::from_secs(60),
        || http_get(&format!("{ip}:8081"), "/"),
    );
    assert!(body.contains("hello from server"), "{body}");
    // The completed Job's pod stays as it was and is not run again.
    let done_after = pods(&sim, "job-name=done");
    assert_eq!(done_after.len(), 1);
    assert_eq!(
        done_after[0]["metadata"]["uid"],
        done_before[0]["metadata"]["uid"]
    );
    assert_eq!(done_after[0]["status"]["phase"], "Succeeded");
    assert_eq!(
        done_after[0]["status"]["containerStatuses"],
        done_before[0]["status"]["containerStatuses"]
    );
    assert_eq!(
        sim.jsonpath(&["get", "job", "done"], "{.status.succeeded}"),
        "1"
    );
    // Still exactly one replacement for the lost Job pod.
    assert_eq!(pods(&sim, "job-name=long").len(), 2);
    assert_eq!(
        sim.jsonpath(&["get", "job", "long"], "{.status.failed}/{.status.active}"),
        "1/1"
    );
}

/// A tailor-sim killed outright leaves its containers running; the next start kills them (as a
/// reboot would) so the pods run again on their own IPs and ports.
#[test]
fn a_crashed_sim_kills_its_leftover_containers_and_reruns_the_pods() {
    let mut sim = Sim::start(&[]);
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: survivor}\nspec:\n  containers:\n  - name: c\n    image: testpod\n    args: [serve, '8082']\n    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]\n    readinessProbe: {httpGet: {path: /, port: 8082}, periodSeconds: 1}\n");
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=180s",
        "pod/survivor",
    ]);
    // The snapshot is written a few times a second: crash once it has the running container.
    wait_for(
        "the running pod to be saved",
        Duration::from_secs(30),
        || {
            let saved = sim.saved_objects();
            saved["objects"]["/pods"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| {
                    p["metadata"]["name"] == "survivor"
                        && p["status"]["containerStatuses"][0]["ready"] == true
                })
                .then_some(())
        },
    );
    sim.crash_and_restart();
    wait_for(
        "the pod to run again in place of the leftover container",
        Duration::from_secs(120),
        || {
            let p: Value =
                serde_json::from_str(&sim.ok(&["get", "pod", "survivor", "-o", "json"])).ok()?;
            let c = &p["status"]["containerStatuses"][0];
            (c["restartCount"] == 1 && c["ready"] == true && c["state"]["running"].is_object())
                .then_some(())
        },
    );
    // Its new process listens: the port was free again.
    let logs = sim.ok(&["logs", "survivor"]);
    assert!(logs.contains("listening on"), "{logs}");
    let ip = sim.jsonpath(&["get", "pod", "survivor"], "{.status.podIP}");
    let body = wait_for("the pod to answer", Duration::from_secs(60), || {
        http_get(&format!("{ip}:8082"), "/")
    });
    assert!(body.contains("hello from survivor"), "{body}");
}

/// The benchmark command runs and reports what it measures (its numbers are not asserted).
#[test]
fn bench_reports_request_latency_watch_delivery_and_memory() {
    let out = Command::new(env!("CARGO_BIN_EXE_tailor-sim"))
        .args(["bench", "--objects", "100", "--watchers", "5"])
        .output()
        .expect("run tailor-sim bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "create  p50",
        "get     p50",
        "list of 100:",
        "every watcher saw [100, 100, 100, 100, 100] ADDED events",
        "memory (VmRSS of the simulator)",
    ] {
        assert!(stdout.contains(part), "{part:?} missing from {stdout}");
    }
}

#[test]
fn pods_get_sigterm_and_deletion_cascades() {
    let sim = Sim::start(&[]);
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: graceful}\nspec:\n  terminationGracePeriodSeconds: 20\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'trap \"echo got SIGTERM; exit 0\" TERM; echo started; while true; do sleep 0.1; done']\n");
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=180s",
        "pod/graceful",
    ]);
    wait_for("first log line", Duration::from_secs(120), || {
        sim.ok(&["logs", "graceful"])
            .contains("started")
            .then_some(())
    });
    let mut follower = Command::new("kubectl")
        .args(["logs", "-f", "graceful"])
        .env("KUBECONFIG", &sim.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = follower.stdout.take().expect("follower stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Once the follower has printed the existing log it is attached.
    let mut followed: Vec<String> = vec![];
    wait_for("kubectl logs -f to attach", Duration::from_secs(60), || {
        followed.extend(rx.try_iter());
        followed.iter().any(|l| l.contains("started")).then_some(())
    });
    sim.ok(&["delete", "pod", "graceful", "--timeout=120s"]);
    let status = follower.wait().expect("kubectl logs -f ends with the pod");
    assert!(status.success());
    wait_for("the SIGTERM trap's output", Duration::from_secs(30), || {
        followed.extend(rx.try_iter());
        followed
            .iter()
            .any(|l| l.contains("got SIGTERM"))
            .then_some(())
    });
    // Owner references: background, foreground and orphan deletion of a Deployment.
    let dep = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      terminationGracePeriodSeconds: 5\n      containers: [{{name: c, image: busybox, command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.1; done']}}]\n"
        )
    };
    for name in ["bg", "fg", "orphan"] {
        sim.apply(&dep(name));
    }
    for name in ["bg", "fg", "orphan"] {
        sim.ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=180s",
        ]);
    }
    sim.ok(&["delete", "deployment", "bg"]);
    sim.ok(&["delete", "deployment", "fg", "--cascade=foreground"]);
    sim.ok(&["delete", "deployment", "orphan", "--cascade=orphan"]);
    for name in ["bg", "fg"] {
        wait_for(
            "dependents to be collected",
            Duration::from_secs(60),
            || {
                let left = sim.ok(&["get", "rs,pods", "-l", &format!("app={name}"), "-o", "name"]);
                left.trim().is_empty().then_some(())
            },
        );
    }
    let owners = sim.jsonpath(
        &["get", "rs", "-l", "app=orphan"],
        "{.items[0].metadata.name} {.items[0].metadata.ownerReferences}",
    );
    assert!(
        owners.starts_with("orphan-") && owners.trim_end().split(' ').count() == 1,
        "orphaned ReplicaSet keeps running without an owner: {owners}"
    );
    // Namespace deletion removes its content, then the namespace.
    sim.ok(&["create", "namespace", "doomed"]);
    sim.ok(&[
        "create",
        "configmap",
        "x",
        "-n",
        "doomed",
        "--from-literal=a=b",
    ]);
    sim.ok(&["delete", "namespace", "doomed", "--timeout=180s"]);
    assert!(
        !sim.kubectl(&["get", "namespace", "doomed"])
            .status
            .success()
    );
}

#[test]
fn jobs_suspend_resume_and_hit_their_deadline() {
    let sim = Sim::start(&[]);
    let job = |name: &str, extra: &str, cmd: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{extra}  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 2\n      containers: [{{name: c, image: busybox, command: [sh, -c, '{cmd}']}}]\n"
        )
    };
    // Suspended: no pods until resumed, then it runs to completion.
    sim.apply(&job("held", "  suspend: true\n", "echo ran"));
    wait_for("Suspended condition", Duration::from_secs(90), || {
        (sim.jsonpath(
            &["get", "job", "held"],
            r#"{.status.conditions[?(@.type=="Suspended")].status}"#,
        ) == "True")
            .then_some(())
    });
    assert!(
        sim.ok(&["get", "pods", "-l", "job-name=held", "-o", "name"])
            .trim()
            .is_empty(),
        "a suspended job has no pods"
    );
    sim.ok(&[
        "patch",
        "job",
        "held",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    sim.ok(&[
        "wait",
        "--for=condition=complete",
        "--timeout=180s",
        "job/held",
    ]);
    assert_eq!(sim.ok(&["logs", "job/held"]).trim(), "ran");
    // A running Job's pod template is immutable.
    let out = sim.kubectl(&["patch", "job", "held", "--type", "json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/command/2","value":"echo other"}]"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("spec.template")
            && err.contains("field is immutable"),
        "{err}"
    );
    // activeDeadlineSeconds: the running pod is terminated and the job fails.
    sim.apply(&job(
        "slow",
        "  activeDeadlineSeconds: 2\n",
        "while true; do sleep 0.2; done",
    ));
    sim.ok(&[
        "wait",
        "--for=condition=failed",
        "--timeout=180s",
        "job/slow",
    ]);
    assert_eq!(
        sim.jsonpath(
            &["get", "job", "slow"],
            r#"{.status.conditions[?(@.type=="Failed")].reason}"#
        ),
        "DeadlineExceeded"
    );
    wait_for("the job's pod to stop", Duration::from_secs(90), || {
        let phases = sim.jsonpath(
            &["get", "pods", "-l", "job-name=slow"],
            "{.items[*].status.phase}",
        );
        (!phases.contains("Running")).then_some(())
    });
}

#[test]
fn a_startup_probe_holds_liveness_and_readiness_until_it_succeeds() {
    let sim = Sim::start(&[]);
    // Listens only after 3 s, with a liveness probe that restarts at the first failure: the
    // startup probe keeps it from running until the server is up.
    let pod = |name: &str, start: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'sleep 3; exec python3 -m http.server 8080 --bind $POD_IP']\n    env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]\n    startupProbe: {start}\n    livenessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1, failureThreshold: 1}}\n    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}\n"
        )
    };
    sim.apply(&pod(
        "slow",
        "{httpGet: {path: /, port: 8080}, periodSeconds: 1, failureThreshold: 30}",
    ));
    wait_for(
        "the slow starter to be Ready",
        Duration::from_secs(60),
        || {
            (sim.jsonpath(
                &["get", "pod", "slow"],
                "{.status.containerStatuses[0].ready}",
            ) == "true")
                .then_some(())
        },
    );
    assert_eq!(
        sim.jsonpath(
            &["get", "pod", "slow"],
            "{.status.containerStatuses[0].started}"
        ),
        "true"
    );
    assert_eq!(
        sim.jsonpath(
            &["get", "pod", "slow"],
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0",
        "liveness ran before the startup probe succeeded"
    );
    // A startup probe that never succeeds restarts the container, saying which probe failed.
    sim.apply(&pod(
        "never",
        "{tcpSocket: {port: 9999}, periodSeconds: 1, failureThreshold: 2}",
    ));
    wait_for("a startup-probe restart", Duration::from_secs(60), || {
        let n: i64 = sim
            .jsonpath(
                &["get", "pod", "never"],
                "{.status.containerStatuses[0].restartCount}",
            )
            .parse()
            .unwrap_or(0);
        (n >= 1).then_some(())
    });
    assert_eq!(
        sim.jsonpath(
            &["get", "pod", "never"],
            "{.status.containerStatuses[0].started}"
        ),
        "false"
    );
    let events = sim.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=never",
    ]);
    assert!(events.contains("failed startup probe"), "{events}");
}

#[test]
fn liveness_failures_restart_containers_and_pvc_data_outlives_pods() {
    let sim = Sim::start(&[]);
    // Nothing listens on 9999: the liveness probe fails and the kubelet restarts the container.
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: sick}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.1; done']\n    livenessProbe: {tcpSocket: {port: 9999}, periodSeconds: 1, failureThreshold: 1}\n");
    wait_for("a liveness restart", Duration::from_secs(120), || {
        let n: i64 = sim
            .jsonpath(
                &["get", "pod", "sick"],
                "{.status.containerStatuses[0].restartCount}",
            )
            .parse()
            .unwrap_or(0);
        (n >= 1).then_some(())
    });
    // A claim is bound to a directory; what one pod writes, the next one reads.
    sim.apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n");
    wait_for("claim bound", Duration::from_secs(60), || {
        (sim.jsonpath(&["get", "pvc", "data"], "{.status.phase}") == "Bound").then_some(())
    });
    let pod = |name: &str, cmd: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, '{cmd}']\n    volumeMounts: [{{name: d, mountPath: /data}}]\n  volumes: [{{name: d, persistentVolumeClaim: {{claimName: data}}}}]\n"
        )
    };
    sim.apply(&pod("writer", "echo kept > /data/file"));
    wait_for("writer done", Duration::from_secs(120), || {
        (sim.jsonpath(&["get", "pod", "writer"], "{.status.phase}") == "Succeeded").then_some(())
    });
    sim.apply(&pod("reader", "cat /data/file"));
    wait_for("reader done", Duration::from_secs(120), || {
        (sim.jsonpath(&["get", "pod", "reader"], "{.status.phase}") == "Succeeded").then_some(())
    });
    assert_eq!(sim.ok(&["logs", "reader"]).trim(), "kept");
}
