//! Waiting for a cluster to get somewhere: the one polling helper of the e2e and tailor-sim
//! suites.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Env, phase};

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`, with what
/// `describe` says about the state the test is stuck in (objects, logs; `String::new` for
/// nothing). The first polls come quickly (50 ms, doubling up to 500 ms), so a wait for
/// something that is nearly there costs little, and a long one does not hammer the cluster.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                describe()
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// What a timed-out wait prints: the tailor objects, workloads and pods of `ns`, its Events, and
/// the operator's log.
pub fn describe(env: &'static Env, ns: &str) -> impl Fn() -> String + 'static {
    let ns = ns.to_string();
    move || {
        format!(
            "--- objects in {ns}:\n{}\n--- events:\n{}\n--- operator logs:\n{}",
            env.kubectl(&[
                "-n",
                &ns,
                "get",
                "tailor,jobs,deployments,pods",
                "-o",
                "yaml"
            ])
            .unwrap_or_else(|e| e.to_string()),
            env.kubectl(&["-n", &ns, "get", "events"])
                .unwrap_or_else(|e| e.to_string()),
            env.operator_logs()
        )
    }
}

/// Waits until `kind` `ns/name` is in phase `want`, and returns it.
pub fn wait_phase(
    env: &'static Env,
    ns: &str,
    kind: &str,
    name: &str,
    want: &str,
    timeout: Duration,
) -> Value {
    wait_for(
        &format!("{kind} {ns}/{name} to be {want}"),
        timeout,
        || env.object(ns, kind, name).filter(|o| phase(o) == want),
        describe(env, ns),
    )
}
