//! tailor-sim's kubelet, driven with kubectl: volume mounts (subPath, subPathExpr, readOnly) as
//! the kubelet prepares them, and a shutdown with pods in every state.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Sim, tail, wait_for};

/// Processes whose environment says they are containers of the simulator serving on `port`
/// (the kubelet gives every container `KUBERNETES_SERVICE_PORT`), with their command lines.
fn containers_of(port: &str) -> Vec<(i32, String)> {
    let marker = format!("KUBERNETES_SERVICE_PORT={port}");
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out.push((pid, cmd));
        }
    }
    out
}

fn phase(sim: &Sim, pod: &str) -> String {
    sim.jsonpath(&["get", "pod", pod], "{.status.phase}")
}

/// A pod whose container ignores SIGTERM and keeps a child that left its process group and
/// session (as a daemon does): only killing the whole container stops it.
fn deaf_pod(name: &str, grace: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: {grace}\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, 'trap \"\" TERM; setsid sh -c \"trap \\\"\\\" TERM; while true; do sleep 1; done\" & while true; do sleep 1; done']\n"
    )
}

#[test]
fn sigterm_with_pods_starting_running_and_terminating_exits_and_leaves_no_process() {
    let mut sim = Sim::start(&["--shutdown-grace-period", "3s"]);
    let port = sim.port();
    // Running, deaf to SIGTERM.
    sim.apply(&deaf_pod("stubborn", 30));
    // Terminating: deleted with ten minutes of grace, deaf to SIGTERM.
    sim.apply(&deaf_pod("leaving", 600));
    for p in ["stubborn", "leaving"] {
        wait_for(&format!("pod {p} to run"), Duration::from_secs(120), || {
            (phase(&sim, p) == "Running").then_some(())
        });
    }
    sim.ok(&["delete", "pod", "leaving", "--wait=false"]);
    wait_for("pod leaving to terminate", Duration::from_secs(30), || {
        let ts = sim.jsonpath(&["get", "pod", "leaving"], "{.metadata.deletionTimestamp}");
        (!ts.is_empty()).then_some(())
    });
    // Starting: pods just created (a burst of replicas) and one waiting for a ConfigMap.
    sim.apply("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: burst}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: burst}}\n  template:\n    metadata: {labels: {app: burst}}\n    spec:\n      containers: [{name: c, image: busybox, command: [sh, -c, 'while true; do sleep 1; done']}]\n");
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: waiting}\nspec:\n  containers: [{name: c, image: busybox, command: [sh, -c, 'sleep 1000'], volumeMounts: [{name: cfg, mountPath: /cfg}]}]\n  volumes: [{name: cfg, configMap: {name: not-yet}}]\n");
    let before = containers_of(&port);
    assert!(
        before.len() >= 4,
        "the deaf pods' processes run: {before:?}"
    );
    // The shutdown grace period is 3s: stopping takes about that, not ten minutes.
    let status = sim.terminate(Duration::from_secs(60));
    let log = sim.log();
    let status = status.unwrap_or_else(|| {
        panic!(
            "tailor-sim did not exit within a minute of SIGTERM\n{}",
            tail(&log)
        )
    });
    assert!(status.success(), "exit status {status}\n{}", tail(&log));
    assert!(log.contains("stopped"), "{}", tail(&log));
    // No container process is left, however it hid.
    let left = wait_for(
        "the containers' processes to be gone",
        Duration::from_secs(10),
        || {
            let left = containers_of(&port);
            left.is_empty().then_some(left)
        },
    );
    assert!(left.is_empty(), "{left:?}");
    // The state saved is the cluster before the shutdown (a reboot, not a drain).
    let saved = sim.saved_objects();
    let pods = saved["objects"]["/pods"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let stubborn = pods
        .iter()
        .find(|p| p["metadata"]["name"] == "stubborn")
        .expect("pod stubborn saved");
    assert_eq!(stubborn["status"]["phase"], "Running");
}

#[test]
fn subpath_and_read_only_mounts_as_the_kubelet_prepares_them() {
    let sim = Sim::start(&[]);
    sim.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=app.conf=colour=blue",
    ]);
    sim.apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n");
    let host = tempfile::tempdir().expect("hostPath dir");
    std::fs::create_dir_all(host.path().join("shared/in")).expect("mkdir");
    std::fs::write(host.path().join("shared/in/hello"), "from the host").expect("write");
    // One container writes through subPaths (created when missing), reads a ConfigMap key as a
    // file, and tries to write where it may not (read-only mounts, a ConfigMap volume).
    let script = "set -u; \
        echo written > /work/out.txt; \
        echo per-pod > /per-pod/name; \
        cat /etc/app.conf; echo; \
        cat /host/hello; echo; \
        if echo x > /host/nope 2>/dev/null; then echo host-writable; else echo host-read-only; fi; \
        if echo x > /cfg/x 2>/dev/null; then echo cfg-writable; else echo cfg-read-only; fi; \
        if echo x > /scratch-ro/x 2>/dev/null; then echo scratch-writable; else echo scratch-read-only; fi";
    sim.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: mounts}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, '{script}']\n    env: [{{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n    volumeMounts:\n    - {{name: data, mountPath: /work, subPath: team-a/run-1}}\n    - {{name: data, mountPath: /per-pod, subPathExpr: 'pods/$(POD)'}}\n    - {{name: cfg, mountPath: /etc/app.conf, subPath: app.conf}}\n    - {{name: cfg, mountPath: /cfg}}\n    - {{name: host, mountPath: /host, subPath: shared/in, readOnly: true}}\n    - {{name: scratch, mountPath: /scratch-ro, readOnly: true}}\n  volumes:\n  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}\n  - {{name: cfg, configMap: {{name: cfg}}}}\n  - {{name: host, hostPath: {{path: {}}}}}\n  - {{name: scratch, emptyDir: {{}}}}\n",
        host.path().display()
    ));
    wait_for("pod mounts to finish", Duration::from_secs(120), || {
        let p = phase(&sim, "mounts");
        (p == "Succeeded" || p == "Failed").then_some(())
    });
    let logs = sim.ok(&["logs", "mounts"]);
    assert_eq!(phase(&sim, "mounts"), "Succeeded", "{logs}");
    for line in [
        "colour=blue",
        "from the host",
        "host-read-only",
        "cfg-read-only",
        "scratch-read-only",
    ] {
        assert!(
            logs.lines().any(|l| l == line),
            "{line:?} in the container's output:\n{logs}"
        );
    }
    // The subPaths were created inside the claim's volume and hold what the container wrote.
    let pv = sim.jsonpath(&["get", "pvc", "data"], "{.spec.volumeName}");
    let dir = sim.jsonpath(&["get", "pv", &pv], "{.spec.hostPath.path}");
    let dir = std::path::Path::new(&dir);
    assert_eq!(
        std::fs::read_to_string(dir.join("team-a/run-1/out.txt")).ok(),
        Some("written\n".to_string())
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("pods/mounts/name")).ok(),
        Some("per-pod\n".to_string())
    );
    assert!(!host.path().join("shared/in/nope").exists());

    // A subPath that leaves its volume: `..` is refused at admission, and a symlink out of the
    // volume by the kubelet, which keeps the container from starting and says why.
    let out = sim.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: escape}\nspec:\n  containers:\n  - {name: c, image: busybox, command: [sh, -c, 'true'], volumeMounts: [{name: data, mountPath: /x, subPath: ../../etc}]}\n  volumes: [{name: data, emptyDir: {}}]\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(
                "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../../etc\": must not contain '..'"
            ),
        "{err}"
    );
    std::os::unix::fs::symlink("/etc", dir.join("outside")).expect("symlink");
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: escape}\nspec:\n  containers:\n  - {name: c, image: busybox, command: [sh, -c, 'cat /x/hostname'], volumeMounts: [{name: data, mountPath: /x, subPath: outside}]}\n  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]\n");
    let waiting = wait_for(
        "the escaping subPath to be refused",
        Duration::from_secs(60),
        || {
            let w = sim.jsonpath(
                &["get", "pod", "escape"],
                "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}",
            );
            w.starts_with("CreateContainerConfigError").then_some(w)
        },
    );
    assert_eq!(
        waiting,
        "CreateContainerConfigError failed to prepare subPath for volumeMount \"data\" of container \"c\""
    );
    let events = sim.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=escape",
    ]);
    assert!(
        events.contains("Error: failed to prepare subPath for volumeMount"),
        "{events}"
    );
}

#[test]
fn a_failed_init_container_fails_a_never_restarted_pod_with_its_log_tail() {
    let sim = Sim::start(&[]);
    // Two such pods at once, then one that runs: a failed init container must leave the node
    // working (it once deadlocked the kubelet's status writes).
    for name in ["fetch-a", "fetch-b"] {
        sim.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  initContainers:\n  - name: fetch\n    image: busybox\n    command: [sh, -c, 'echo progress 50%; echo \"error: s3://b/k: PermissionDenied: 403 ✗\"; exit 5']\n    terminationMessagePolicy: FallbackToLogsOnError\n  containers:\n  - {{name: main, image: busybox, command: [sh, -c, 'echo never']}}\n"
        ));
    }
    for name in ["fetch-a", "fetch-b"] {
        wait_for(&format!("{name} to fail"), Duration::from_secs(60), || {
            (phase(&sim, name) == "Failed").then_some(())
        });
        let init = sim.jsonpath(
            &["get", "pod", name],
            "{.status.initContainerStatuses[0].state.terminated.exitCode} {.status.initContainerStatuses[0].state.terminated.message}",
        );
        assert!(
            init.starts_with("5 ") && init.ends_with("error: s3://b/k: PermissionDenied: 403 ✗"),
            "{init}"
        );
        // The main container never ran.
        let main = sim.jsonpath(
            &["get", "pod", name],
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        assert!(!main.is_empty(), "main container waiting, never started");
    }
    sim.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: after}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: c, image: busybox, command: [sh, -c, 'echo ran']}\n");
    wait_for("the next pod to run", Duration::from_secs(60), || {
        (phase(&sim, "after") == "Succeeded").then_some(())
    });
}

#[test]
fn a_volume_over_tmp_does_not_hide_a_program_built_under_tmp() {
    // An image's program is in the image, out of reach of the pod's volumes. Here an image maps
    // to a host path, under /tmp as a build in a temporary directory is, and the pod mounts a
    // scratch emptyDir at /tmp as read-only-root pods do.
    let dir = tempfile::Builder::new()
        .prefix("sim-image-")
        .tempdir_in("/tmp")
        .expect("tempdir under /tmp");
    let program = dir.path().join("bin/prog");
    std::fs::create_dir_all(program.parent().expect("parent")).expect("mkdir");
    std::fs::copy("/bin/sh", &program).expect("copy sh");
    let sim = Sim::start(&["--image", &format!("scratch-app={}", program.display())]);
    let marker = dir.path().with_extension("written");
    sim.apply(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: scratch}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: scratch-app:1\n    args: [-c, 'echo ran; touch {} && echo scratch-writable']\n    volumeMounts: [{{name: tmp, mountPath: /tmp}}]\n  volumes: [{{name: tmp, emptyDir: {{}}}}]\n", marker.display()));
    let done = wait_for("the pod to finish", Duration::from_secs(60), || {
        let p = phase(&sim, "scratch");
        (p == "Succeeded" || p == "Failed").then_some(p)
    });
    let logs = String::from_utf8_lossy(&sim.kubectl(&["logs", "scratch"]).stdout).into_owned();
    assert_eq!(done, "Succeeded", "{logs}");
    assert_eq!(logs.trim(), "ran\nscratch-writable");
    // The host's /tmp was not written: /tmp in the pod is its emptyDir.
    assert!(!Path::new(&marker).exists());
}
