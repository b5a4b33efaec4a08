//! Several router replicas, and revisions that gain pods (issue 19): a user lands on the same
//! revision through every router pod, and stays on it when the revision's backend grows, while
//! that revision's users spread over its new pods. Each router pod counts its own traffic; the
//! pods' `/stats` add up to what the backends saw.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;

const USERS: usize = 80;

/// Sends one request per user through `router`; returns user → backend that served it.
async fn round(client: &TestClient, router: &RouterProc) -> HashMap<String, String> {
    let url = format!("{}/v1/chat/completions", router.url());
    let mut out = HashMap::new();
    for u in 0..USERS {
        let user = format!("user-{u}");
        let r = post(client, &url, &[], chat_body("bot", Some(&user)))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        out.insert(user, r.served_by());
    }
    out
}

/// The revision a backend belongs to: `a1`, `a2`, `a3` are revision `a`'s pods.
fn revision(backend: &str) -> &str {
    &backend[..1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_keep_their_revision_across_router_pods_and_new_backend_pods() {
    let a1 = Backend::start("a1", Mode::Ok).await;
    let a2 = Backend::start("a2", Mode::Ok).await;
    let a3 = Backend::start("a3", Mode::Ok).await;
    let b1 = Backend::start("b1", Mode::Ok).await;
    let config = |a: &[String]| route_config(&[("a", a, 50), ("b", &[b1.url()], 50)], "");
    let first = config(&[a1.url()]);
    let one = RouterProc::start(&first).await;
    let two = RouterProc::start(&first).await;
    let client = http_client();

    // Through either router pod, every user reaches the same revision.
    let via_one = round(&client, &one).await;
    let via_two = round(&client, &two).await;
    assert_eq!(via_one, via_two, "router pods disagree on users");
    let on_a = via_one.values().filter(|b| revision(b) == "a").count();
    assert!((20..=60).contains(&on_a), "{on_a} of {USERS} users on a");

    // Each pod counts its own requests; together they are the backends' counts.
    let counted = |stats: &[serde_json::Value], target: &str| -> u64 {
        stats
            .iter()
            .map(|s| target_stats(s, "bot", target)["cumulative"]["requests"].as_u64())
            .map(|n| n.unwrap_or(0))
            .sum()
    };
    poll_until(Duration::from_secs(20), "stats of both pods", || {
        let (one, two, a1, b1) = (&one, &two, &a1, &b1);
        async move {
            let pods = [one.stats().await, two.stats().await];
            counted(&pods, "a") == a1.count() && counted(&pods, "b") == b1.count()
        }
    })
    .await;
    let per_pod = target_stats(&one.stats().await, "bot", "a")["cumulative"]["requests"].clone();
    assert_eq!(per_pod, json!(on_a), "one pod counts only its own traffic");

    // Revision a scales from one pod to three: both routers load the longer backend list.
    let grown = config(&[a1.url(), a2.url(), a3.url()]);
    one.rewrite_config(&grown).await;
    two.rewrite_config(&grown).await;
    let before = (a1.count(), b1.count());
    let after_one = round(&client, &one).await;
    let after_two = round(&client, &two).await;
    for (user, backend) in &via_one {
        for after in [&after_one, &after_two] {
            assert_eq!(
                revision(&after[user]),
                revision(backend),
                "{user} moved between revisions when a gained pods"
            );
        }
    }
    // Revision a's users now spread over its three pods; b's traffic is unchanged.
    let a_requests = 2 * on_a as u64;
    let spread = [a1.count() - before.0, a2.count(), a3.count()];
    assert_eq!(spread.iter().sum::<u64>(), a_requests);
    for (pod, n) in ["a1", "a2", "a3"].iter().zip(spread) {
        assert!(
            n * 6 >= a_requests,
            "{pod} got {n} of {a_requests}: {spread:?}"
        );
    }
    assert_eq!(b1.count() - before.1, 2 * (USERS - on_a) as u64);
}
