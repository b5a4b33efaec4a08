//! `hf://` against a local HTTP endpoint (`HF_ENDPOINT`) that serves the Hub's file layout:
//! `tailor_local_s3::hub::LocalHub`, whose header lists the Hub behaviours it reproduces.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{assert_no_secret, bytes, files_under};
use tailor_artifacts::{ArtifactUri, Context, Env, ErrorKind, Fetcher};
use tailor_local_s3::hub::{LocalHub, Repo};

const TOKEN: &str = "hf_tailorTestTokenGranted0123";
const OTHER_TOKEN: &str = "hf_tailorTestTokenNotGranted9";

/// A shard as transformers writes it: a valid safetensors file.
fn shard(names: &[&str], rows: usize, seed: u64) -> Vec<u8> {
    let data: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, _)| bytes(seed + i as u64, rows * 64 * 4))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, 64], d)
                    .expect("view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";

fn tiny_commits() -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let s1 = shard(
        &[
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ],
        4096,
        1,
    );
    let s2 = shard(
        &["model.layers.1.self_attn.q_proj.weight", "lm_head.weight"],
        4096,
        9,
    );
    let index = serde_json::json!({
        "metadata": {"total_size": s1.len() + s2.len()},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
            "model.layers.1.self_attn.q_proj.weight": "model-00002-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors"
        }
    });
    let tokenizer =
        serde_json::json!({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}});
    let mut new = BTreeMap::new();
    new.insert(
        "config.json".to_string(),
        br#"{"model_type":"llama","v":2}"#.to_vec(),
    );
    new.insert("model-00001-of-00002.safetensors".to_string(), s1);
    new.insert("model-00002-of-00002.safetensors".to_string(), s2);
    new.insert(
        "model.safetensors.index.json".to_string(),
        index.to_string().into_bytes(),
    );
    new.insert(
        "tokenizer.json".to_string(),
        tokenizer.to_string().into_bytes(),
    );
    new.insert(
        "tokenizer_config.json".to_string(),
        br#"{"chat_template":"{{ messages }}","eos_token":"</s>"}"#.to_vec(),
    );
    new.insert(
        "special_tokens_map.json".to_string(),
        br#"{"eos_token":"</s>"}"#.to_vec(),
    );
    new.insert("onnx/model.onnx".to_string(), bytes(77, 2 << 20));
    new.insert("onnx/config.json".to_string(), b"{}".to_vec());
    let mut old = BTreeMap::new();
    old.insert(
        "config.json".to_string(),
        br#"{"model_type":"llama","v":1}"#.to_vec(),
    );
    old.insert(
        "tokenizer.json".to_string(),
        tokenizer.to_string().into_bytes(),
    );
    BTreeMap::from([(OLD.to_string(), old), (NEW.to_string(), new)])
}

async fn start() -> LocalHub {
    let mut repos = BTreeMap::new();
    repos.insert(
        "models/org/tiny".to_string(),
        Repo {
            refs: BTreeMap::from([
                ("main".to_string(), NEW.to_string()),
                ("v1.0".to_string(), OLD.to_string()),
                ("refs/pr/1".to_string(), OLD.to_string()),
            ]),
            commits: tiny_commits(),
            ..Repo::default()
        },
    );
    let gated_files = BTreeMap::from([(
        "3333333333333333333333333333333333333333".to_string(),
        BTreeMap::from([
            ("config.json".to_string(), b"{}".to_vec()),
            ("model.safetensors".to_string(), shard(&["w"], 16, 3)),
        ]),
    )]);
    repos.insert(
        "models/org/gated".to_string(),
        Repo {
            gated: true,
            refs: BTreeMap::from([(
                "main".to_string(),
                "3333333333333333333333333333333333333333".to_string(),
            )]),
            commits: gated_files,
            ..Repo::default()
        },
    );
    repos.insert(
        "models/org/rotten".to_string(),
        Repo {
            rotten: true,
            refs: BTreeMap::from([("main".to_string(), NEW.to_string())]),
            commits: BTreeMap::from([(
                NEW.to_string(),
                BTreeMap::from([("model.safetensors".to_string(), shard(&["w"], 64, 4))]),
            )]),
            ..Repo::default()
        },
    );
    repos.insert(
        "datasets/org/chat".to_string(),
        Repo {
            refs: BTreeMap::from([("main".to_string(), OLD.to_string())]),
            commits: BTreeMap::from([(
                OLD.to_string(),
                BTreeMap::from([
                    (
                        "data/train.jsonl".to_string(),
                        b"{\"messages\":[]}\n".to_vec(),
                    ),
                    (
                        "data/test.jsonl".to_string(),
                        b"{\"messages\":[]}\n".to_vec(),
                    ),
                    ("README.md".to_string(), b"# chat".to_vec()),
                ]),
            )]),
            ..Repo::default()
        },
    );
    // The CDN is another origin (another port): the client must drop the token there.
    LocalHub::start(repos, TOKEN).expect("local Hub")
}

fn ctx(endpoint: &str, token: Option<&str>) -> Context {
    let mut env = Env::from_pairs([("HF_ENDPOINT", endpoint)]);
    if let Some(t) = token {
        env.set("HF_TOKEN", t);
    }
    Context::new(env)
}

fn uri(s: &str) -> ArtifactUri {
    ArtifactUri::parse(s).expect("uri")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolves_revisions_and_fetches_a_sharded_checkpoint() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let fetcher = Fetcher::new(ctx(&hub.endpoint, None))
        .with_chunk_size(256 * 1024)
        .with_retry_for(Duration::ZERO);

    let f = fetcher
        .fetch(&uri("hf://org/tiny"), Some(&dir.path().join("main")))
        .await
        .expect("fetch main");
    assert_eq!(f.version, NEW, "main resolves to its commit sha");
    let repo = hub.repo("models/org/tiny").expect("repo");
    let commit = &repo.commits[NEW];
    let mut want: Vec<String> = commit.keys().cloned().collect();
    want.sort();
    assert_eq!(files_under(&dir.path().join("main")), want);
    for (name, data) in commit {
        assert_eq!(
            &std::fs::read(dir.path().join("main").join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    // LFS files were verified against X-Linked-Etag; regular files have no sha256 to check.
    for file in &f.files {
        let lfs = file.path.ends_with(".safetensors") || file.path.ends_with(".onnx");
        assert_eq!(file.sha256.is_some(), lfs, "{file:?}");
    }
    // The sharded checkpoint is whole: every tensor of the index is in the shard it names.
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("main/model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    for (tensor, shard_file) in index["weight_map"].as_object().expect("map") {
        let bytes = std::fs::read(
            dir.path()
                .join("main")
                .join(shard_file.as_str().expect("name")),
        )
        .expect("shard");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        assert_eq!(
            st.tensor(tensor).expect("tensor").shape(),
            [4096, 64],
            "{tensor}"
        );
    }

    for (rev, sha, v) in [("v1.0", OLD, 1), (OLD, OLD, 1), ("refs%2Fpr%2F1", OLD, 1)] {
        let dest = dir.path().join(format!("rev-{}", &rev[..4]));
        let f = fetcher
            .fetch(&uri(&format!("hf://org/tiny@{rev}")), Some(&dest))
            .await
            .expect(rev);
        assert_eq!(f.version, sha, "{rev}");
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).expect("cfg"))
                .expect("json");
        assert_eq!(cfg["v"], v, "{rev}");
    }

    // A directory inside the repository, and one file by its path.
    let f = fetcher
        .fetch(&uri("hf://org/tiny/onnx"), Some(&dir.path().join("onnx")))
        .await
        .expect("subdir");
    assert_eq!(
        files_under(&dir.path().join("onnx")),
        ["config.json", "model.onnx"]
    );
    assert!(f.single.is_none());
    let f = fetcher
        .fetch(
            &uri("hf://org/tiny/tokenizer.json"),
            Some(&dir.path().join("tok")),
        )
        .await
        .expect("one file");
    assert_eq!(f.single, Some(dir.path().join("tok/tokenizer.json")));

    // A dataset repository.
    let f = fetcher
        .fetch(
            &uri("hf://datasets/org/chat/data"),
            Some(&dir.path().join("chat")),
        )
        .await
        .expect("dataset");
    assert_eq!(files_under(&f.dir), ["test.jsonl", "train.jsonl"]);

    for (u, kind, needle) in [
        (
            "hf://org/tiny@nope",
            ErrorKind::NotFound,
            "revision not found",
        ),
        (
            "hf://org/tiny/missing-dir",
            ErrorKind::NotFound,
            "no file at or under",
        ),
        (
            "hf://org/does-not-exist",
            ErrorKind::NotFound,
            "repository not found",
        ),
    ] {
        let e = fetcher
            .fetch(&uri(u), Some(&dir.path().join("err")))
            .await
            .expect_err(u);
        assert_eq!(e.kind, kind, "{e}");
        assert!(
            e.to_string().contains(needle) && e.to_string().contains(u),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gated_repository_needs_a_granted_token() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    for (token, needle) in [(None, "HTTP 401"), (Some(OTHER_TOKEN), "HTTP 403")] {
        let e = Fetcher::new(ctx(&hub.endpoint, token))
            .with_retry_for(Duration::ZERO)
            .fetch(&uri("hf://org/gated"), Some(&dir.path().join("no")))
            .await
            .expect_err("no access");
        let text = e.to_string();
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{text}");
        assert!(text.contains("gated") && text.contains(needle), "{text}");
        assert!(text.contains("hf://org/gated"), "{text}");
        assert_no_secret(&text, &[TOKEN, OTHER_TOKEN]);
        if token.is_none() {
            assert!(text.contains("set HF_TOKEN"), "{text}");
        }
    }
    let f = Fetcher::new(ctx(&hub.endpoint, Some(TOKEN)))
        .fetch(&uri("hf://org/gated"), Some(&dir.path().join("yes")))
        .await
        .expect("granted token (dropped on the CDN redirect, which refuses it)");
    assert_eq!(files_under(&f.dir), ["config.json", "model.safetensors"]);

    // The binary reads HF_TOKEN and HF_ENDPOINT from its environment and never prints them.
    let bin = env!("CARGO_BIN_EXE_tailor-fetch");
    for (token, code) in [(OTHER_TOKEN, 5), (TOKEN, 0)] {
        let out = tokio::process::Command::new(bin)
            .args([
                "hf://org/gated",
                dir.path().join("bin").to_str().expect("utf8"),
                "--retry-for",
                "0",
            ])
            .env_clear()
            .env("HF_ENDPOINT", &hub.endpoint)
            .env("HF_TOKEN", token)
            .env("RUST_LOG", "debug")
            .output()
            .await
            .expect("run");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{all}");
        assert_no_secret(&all, &[TOKEN, OTHER_TOKEN]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lfs_bytes_that_do_not_match_their_sha256_are_refused() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let e = Fetcher::new(ctx(&hub.endpoint, None))
        .with_retry_for(Duration::ZERO)
        .fetch(&uri("hf://org/rotten"), Some(&dir.path().join("r")))
        .await
        .expect_err("rotten bytes");
    assert_eq!(e.kind, ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("hf://org/rotten@{NEW}/model.safetensors")),
        "{e}"
    );
    assert!(files_under(&dir.path().join("r")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_commit_is_served_without_the_hub() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache");
    let fetcher = Fetcher::new(ctx(&hub.endpoint, None))
        .with_cache(Some(cache))
        .with_retry_for(Duration::ZERO);
    let first = fetcher
        .fetch(&uri("hf://org/tiny"), Some(&dir.path().join("a")))
        .await
        .expect("first");
    let served = hub.served();
    assert!(served >= first.bytes_transferred && first.bytes_transferred > 0);

    // The same commit named by branch: resolved (one API call), then linked from the cache.
    let second = fetcher
        .fetch(&uri("hf://org/tiny@main"), Some(&dir.path().join("b")))
        .await
        .expect("second");
    assert!(second.from_cache);
    assert_eq!(second.bytes_transferred, 0);
    assert_eq!(hub.served(), served, "no file bytes served");

    // Pinned to the sha, it needs no Hub at all.
    drop(hub);
    let offline = Fetcher::new(ctx("http://127.0.0.1:9", None))
        .with_cache(Some(dir.path().join("cache")))
        .with_retry_for(Duration::ZERO)
        .fetch(
            &uri(&format!("hf://org/tiny@{NEW}")),
            Some(&dir.path().join("c")),
        )
        .await
        .expect("offline from cache");
    assert!(offline.from_cache);
    assert_eq!(
        files_under(&dir.path().join("c")),
        files_under(&dir.path().join("a"))
    );
}
