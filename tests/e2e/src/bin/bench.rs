//! Benchmark (not a test) of the operator against tailor-sim (or the cluster of
//! `TAILOR_E2E_KUBECONFIG`): N objects of one kind applied at once. Prints the time until every
//! object has a status, reconcile p50/p99 of that kind's controller (from the operator's
//! `/metrics` histogram, interpolated as Prometheus' histogram_quantile does) and the operator's
//! peak RSS (VmHWM; sim mode only).
//!
//! `cargo run --release -p tailor-e2e --bin tailor-e2e-bench -- [finetunejobs|modeldeployments] [N]`
//! - `finetunejobs` (default N 500): suspended FineTuneJobs on one Ready Dataset, until every one
//!   is Queued (its suspended Job created).
//! - `modeldeployments` (default N 200): ModelDeployments of the base model whose server and
//!   router pods select a node label no node has, so the operator builds and watches everything
//!   (pods, services, config, disruption budgets, status) while nothing starts; measured until
//!   every one has a status, then over a further steady-state window of periodic reconciles.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use tailor_e2e::{Env, inline_dataset, phase, quickstart_examples, wait_for};

/// (upper bound, cumulative count) of `tailor_operator_reconcile_duration_seconds` for `controller`.
fn histogram(text: &str, controller: &str) -> Vec<(f64, f64)> {
    let mut out = vec![];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tailor_operator_reconcile_duration_seconds_bucket{")
        else {
            continue;
        };
        if !rest.contains(&format!("controller=\"{controller}\"")) {
            continue;
        }
        let le = rest
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(|s| {
                if s == "+Inf" {
                    f64::INFINITY
                } else {
                    s.parse().unwrap_or(f64::NAN)
                }
            });
        let count = line.rsplit(' ').next().and_then(|s| s.parse::<f64>().ok());
        if let (Some(le), Some(c)) = (le, count) {
            out.push((le, c));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let span = c - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, c);
    }
    f64::NAN
}

fn scrape(env: &Env) -> anyhow::Result<String> {
    let pod = env.operator_pod().context("no operator pod")?;
    let ip = pod["status"]["podIP"]
        .as_str()
        .context("operator pod IP")?
        .to_string();
    let mut s = std::net::TcpStream::connect((ip.as_str(), 8080))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn operator_rss_kib() -> Option<(u64, u64)> {
    let bin = tailor_e2e::binary("tailor-operator").ok()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
            continue;
        };
        if exe == bin {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            };
            return Some((field("VmHWM:")?, field("VmRSS:")?));
        }
    }
    None
}

/// The reconcile histogram of `controller` since `before`.
fn delta(env: &Env, controller: &str, before: &[(f64, f64)]) -> anyhow::Result<Vec<(f64, f64)>> {
    let after = histogram(&scrape(env)?, controller);
    Ok(after
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - before.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1),
            )
        })
        .collect())
}

fn report(controller: &str, delta: &[(f64, f64)]) {
    let count = delta.last().map_or(0.0, |b| b.1);
    println!("{controller} reconciles: {count}");
    println!("reconcile p50: {:.1} ms", quantile(delta, 0.5) * 1000.0);
    println!("reconcile p99: {:.1} ms", quantile(delta, 0.99) * 1000.0);
    let mut below = 0.0;
    let spread: Vec<String> = delta
        .iter()
        .filter_map(|&(le, c)| {
            let n = c - below;
            below = c;
            (n > 0.0).then(|| format!("≤{}ms: {n}", le * 1000.0))
        })
        .collect();
    println!("reconciles by duration: {}", spread.join(", "));
    match operator_rss_kib() {
        Some((hwm, rss)) => println!(
            "operator peak RSS: {:.1} MB (now {:.1} MB)",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        ),
        None => println!("operator peak RSS: not measurable (operator process not local)"),
    }
}

/// Applies `yaml` (N objects) and waits until every object of `plural` in `ns` satisfies
/// `done`; prints the times.
fn apply_and_wait(
    env: &Env,
    ns: &str,
    plural: &str,
    n: usize,
    yaml: &str,
    what: &str,
    done: fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    env.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(yaml))?;
    let applied = t0.elapsed();
    let all = wait_for(
        &format!("every {plural} to have a status"),
        Duration::from_secs(600),
        || {
            let list = env.get_json(&["-n", ns, "get", plural]).ok()?;
            let items = list["items"].as_array()?;
            (items.len() == n && items.iter().all(|f| !phase(f).is_empty())).then(|| t0.elapsed())
        },
        || env.operator_logs(),
    );
    let settled = wait_for(
        &format!("every {plural}: {what}"),
        Duration::from_secs(600),
        || {
            let list = env.get_json(&["-n", ns, "get", plural]).ok()?;
            let items = list["items"].as_array()?;
            items.iter().all(done).then(|| t0.elapsed())
        },
        || env.operator_logs(),
    );
    println!("{plural}: {n}");
    println!(
        "kubectl apply (server-side, one request per object): {:.2} s",
        applied.as_secs_f64()
    );
    println!("time until all have a status: {:.2} s", all.as_secs_f64());
    println!("time until all {what}: {:.2} s", settled.as_secs_f64());
    Ok(())
}

fn finetunejobs(env: &Env, n: usize) -> anyhow::Result<()> {
    let ns = "bench";
    env.namespace(ns)?;
    let lines: Vec<String> = quickstart_examples().into_iter().take(24).collect();
    env.apply(&inline_dataset(ns, "data", &lines, 10))?;
    wait_for(
        "the bench Dataset to be Ready",
        Duration::from_secs(300),
        || {
            env.object(ns, "dataset", "data")
                .filter(|d| phase(d) == "Ready")
        },
        || env.operator_logs(),
    );
    let before = histogram(&scrape(env)?, "finetunejob");
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: tailor.dev/v1alpha1\nkind: FineTuneJob\nmetadata:\n  name: bench-{i:04}\n  namespace: {ns}\nspec:\n  baseModel: {{uri: pvc://tailor-artifacts/models/base}}\n  datasetRef: {{name: data}}\n  suspend: true\n"
        ));
    }
    // Each job's second pass (after its suspended Job appears) is part of the work.
    let queued = |f: &serde_json::Value| phase(f) == "Queued";
    let what = "Queued (suspended Job created)";
    apply_and_wait(env, ns, "finetunejobs", n, &yaml, what, queued)?;
    report("finetunejob", &delta(env, "finetunejob", &before)?);
    Ok(())
}

/// A node label no node has: the pods stay Pending, the operator does all of its work.
const NOWHERE: &str = "{bench.tailor.dev/nowhere: \"true\"}";

fn modeldeployments(env: &Env, n: usize) -> anyhow::Result<()> {
    let ns = "bench-md";
    env.namespace(ns)?;
    let before = histogram(&scrape(env)?, "modeldeployment");
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: tailor.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: bench-{i:04}\n  namespace: {ns}\nspec:\n  baseModel: {{uri: pvc://tailor-artifacts/models/base, servedName: base}}\n  replicas: 1\n  resources: {{gpus: 0}}\n  nodeSelector: {NOWHERE}\n  router: {{podTemplate: {{nodeSelector: {NOWHERE}}}}}\n"
        ));
    }
    let observed = |m: &serde_json::Value| m["status"]["observedGeneration"] == 1;
    let what = "observed at generation 1";
    apply_and_wait(env, ns, "modeldeployments", n, &yaml, what, observed)?;
    // Steady state: pods Pending, every deployment requeued on its own schedule.
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    println!("steady-state window after that: {} s", window.as_secs());
    report("modeldeployment", &delta(env, "modeldeployment", &before)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let kind = match args.peek().map(String::as_str) {
        Some("finetunejobs" | "modeldeployments") => args.next(),
        _ => None,
    };
    let n: Option<usize> = args.next().map(|s| s.parse()).transpose()?;
    let env = Env::get();
    match kind.as_deref() {
        Some("modeldeployments") => modeldeployments(env, n.unwrap_or(200)),
        _ => finetunejobs(env, n.unwrap_or(500)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = vec![
            (0.001, 0.0),
            (0.002, 50.0),
            (0.005, 99.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(&b, 0.5) - 0.002).abs() < 1e-9);
        assert!((quantile(&b, 0.25) - 0.0015).abs() < 1e-9);
        let text = "tailor_operator_reconcile_duration_seconds_bucket{controller=\"finetunejob\",le=\"0.001\"} 3\ntailor_operator_reconcile_duration_seconds_bucket{controller=\"dataset\",le=\"0.001\"} 9\ntailor_operator_reconcile_duration_seconds_bucket{le=\"+Inf\",controller=\"finetunejob\"} 4\n";
        assert_eq!(
            histogram(text, "finetunejob"),
            vec![(0.001, 3.0), (f64::INFINITY, 4.0)]
        );
    }
}
