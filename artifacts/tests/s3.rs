//! The artifact layer against a real S3 server the tests start themselves.
//!
//! The server is `s3s-fs` (through `tailor-local-s3`), chosen over moto's server as the more
//! faithful for what is tested here: it verifies every request's SigV4 signature (a wrong
//! secret is a genuine `403 SignatureDoesNotMatch`; moto accepts any credentials unless its IAM
//! emulation is set up), serves ranged GETs by seeking the stored file (moto 5.2 reads the
//! whole object into memory and slices it for every range), keeps objects as files (which the
//! checksum test corrupts behind its back), and answers with S3's XML errors and codes
//! (`NoSuchKey`, `NoSuchBucket`, `InvalidAccessKeyId`). Faults the server cannot produce —
//! a connection cut mid-body, an endpoint that is down and later comes up, a slow link — come
//! from a TCP proxy in `support` and from starting the server late on a fixed port.
//!
//! Size (over 700 lines, on purpose): one suite per S3 server start; the fault proxy and fixtures are
//! in `support`.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{ACCESS_KEY, Proxy, SECRET_KEY, assert_no_secret, bytes, files_under, write};
use tailor_artifacts::{ArtifactUri, Context, Env, ErrorKind, Fetcher, Store};
use tailor_local_s3::LocalS3;

const BIN: &str = env!("CARGO_BIN_EXE_tailor-fetch");
const BUCKET: &str = "tailor";
const MIB: usize = 1 << 20;

fn server(dir: &Path) -> LocalS3 {
    let s3 = LocalS3::start(&dir.join("s3"), ACCESS_KEY, SECRET_KEY).expect("start s3s-fs");
    s3.create_bucket(BUCKET).expect("bucket");
    s3
}

fn env_for(endpoint: &str, secret: &str) -> Env {
    Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
    ])
}

fn ctx(endpoint: &str) -> Context {
    Context::new(env_for(endpoint, SECRET_KEY))
}

fn uri(s: &str) -> ArtifactUri {
    ArtifactUri::parse(s).expect("uri")
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A sharded checkpoint laid out as transformers writes one.
fn checkpoint(dir: &Path, shard_mib: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("config.json".to_string(), br#"{"model_type":"llama"}"#.to_vec()),
        (
            "model.safetensors.index.json".to_string(),
            br#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#.to_vec(),
        ),
        ("tokenizer/tokenizer.json".to_string(), bytes(3, 300_000)),
    ];
    for i in 1..=2 {
        files.push((
            format!("model-0000{i}-of-00002.safetensors"),
            bytes(i, shard_mib * MIB + 12_345),
        ));
    }
    for (name, data) in &files {
        write(&dir.join(name), data);
    }
    files
}

fn assert_same_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    let mut want: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(files_under(dir), want);
    for (name, data) in files {
        let got = std::fs::read(dir.join(name)).expect("read fetched file");
        assert!(
            got == *data,
            "{name} differs ({} vs {} bytes)",
            got.len(),
            data.len()
        );
    }
}

fn fetch_cmd(args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(args: &[&str], env: &[(String, String)]) -> Output {
    fetch_cmd(args, env).output().expect("run tailor-fetch")
}

fn s3_env(endpoint: &str, secret: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("RUST_LOG".into(), "debug".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_uploads_lists_reads_and_deletes() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    let store = Store::open(&uri("s3://tailor/run1"), &ctx(&s3.endpoint())).expect("open");
    let local = dir.path().join("local");
    let big = bytes(7, 70 * MIB); // above the multipart threshold: uploaded in parts
    write(&local.join("big.bin"), &big);
    write(&local.join("a.json"), b"{\"a\":1}");
    write(&local.join("nested/b.bin"), &bytes(8, 3 * MIB));

    let up = store.upload_dir(&local, "out").await.expect("upload");
    assert_eq!(
        up.iter().map(|u| u.path.as_str()).collect::<Vec<_>>(),
        ["out/a.json", "out/big.bin", "out/nested/b.bin"]
    );
    assert_eq!(up[1].sha256, sha(&big));

    let listed = store.list("out").await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|o| (o.path.as_str(), o.size))
            .collect::<Vec<_>>(),
        [
            ("out/a.json", 7),
            ("out/big.bin", big.len() as u64),
            ("out/nested/b.bin", 3 * MIB as u64)
        ]
    );
    // Listing is by path segments: "out" does not match "outer/".
    store
        .put_bytes("outer/x", bytes::Bytes::from_static(b"x"))
        .await
        .expect("put");
    assert_eq!(store.list("out").await.expect("list").len(), 3);

    let head = store.head("out/big.bin").await.expect("head");
    assert_eq!(head.size, big.len() as u64);
    assert!(head.etag.is_some());
    assert_eq!(
        head.sha256.as_deref(),
        Some(sha(&big).as_str()),
        "the multipart upload recorded its sha256"
    );

    // Ranges inside one of the server's 1 MiB read blocks, across two, and up to the last byte.
    let end = big.len();
    for range in [1_000_000..1_000_100, MIB - 10..2 * MIB + 10, end - 100..end] {
        let mut s = store
            .read("out/big.bin", Some(range.start as u64..range.end as u64))
            .await
            .expect("ranged read");
        let mut got = Vec::new();
        while let Some(c) = futures::StreamExt::next(&mut s).await {
            got.extend_from_slice(&c.expect("chunk"));
        }
        assert_eq!(got, &big[range.clone()], "bytes {range:?}");
    }
    assert_eq!(
        store.sha256("out/big.bin").await.expect("hash"),
        (sha(&big), big.len() as u64)
    );
    assert_eq!(
        &store.read_bytes("out/a.json", 100).await.expect("small")[..],
        b"{\"a\":1}"
    );
    let e = store
        .read_bytes("out/big.bin", 100)
        .await
        .expect_err("limit");
    assert_eq!(e.kind, ErrorKind::Invalid);

    assert_eq!(store.delete_prefix("out/nested").await.expect("delete"), 1);
    assert_eq!(store.list("out").await.expect("list").len(), 2);
    store.delete("out/a.json").await.expect("delete one");
    store
        .delete("out/a.json")
        .await
        .expect("deleting a missing object is fine");
    assert_eq!(store.list("out").await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_in_parallel_and_a_second_fetch_comes_from_the_cache() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    let proxy = Proxy::start(s3.addr);
    let local = dir.path().join("ckpt");
    let files = checkpoint(&local, 6);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let store = Store::open(&uri("s3://tailor/models/tiny"), &ctx(&s3.endpoint())).expect("open");
    store.upload_dir(&local, "").await.expect("upload");

    let cache = dir.path().join("cache");
    let fetcher = Fetcher::new(ctx(&proxy.endpoint()))
        .with_cache(Some(cache.clone()))
        .with_chunk_size(MIB as u64)
        .with_concurrency(8);
    let before = proxy.bytes_down();
    let first = fetcher
        .fetch(
            &uri("s3://tailor/models/tiny"),
            Some(&dir.path().join("node-a")),
        )
        .await
        .expect("first fetch");
    let first_wire = proxy.bytes_down() - before;
    assert_same_files(&dir.path().join("node-a"), &files);
    assert!(!first.from_cache);
    assert_eq!(first.bytes_transferred, total);
    assert!(
        first_wire >= total,
        "{first_wire} bytes on the wire for {total}"
    );
    // Every file carried the sha256 the upload recorded, and was checked against it.
    assert!(
        first.files.iter().all(|f| f.sha256.is_some()),
        "{:?}",
        first.files
    );

    let before = proxy.bytes_down();
    let second = fetcher
        .fetch(
            &uri("s3://tailor/models/tiny/"),
            Some(&dir.path().join("node-a-2")),
        )
        .await
        .expect("second fetch");
    let second_wire = proxy.bytes_down() - before;
    assert!(second.from_cache);
    assert_eq!(second.bytes_transferred, 0);
    assert!(
        second_wire < 16 * 1024,
        "the second fetch moved {second_wire} bytes (a listing is all it needs)"
    );
    assert_eq!(second.version, first.version);
    assert_same_files(&dir.path().join("node-a-2"), &files);

    // One object by its own URI: a single file in the destination.
    let one = fetcher
        .fetch(
            &uri("s3://tailor/models/tiny/config.json"),
            Some(&dir.path().join("cfg")),
        )
        .await
        .expect("single object");
    assert_eq!(one.single, Some(dir.path().join("cfg/config.json")));
    assert_eq!(files_under(&dir.path().join("cfg")), ["config.json"]);

    // A changed object is a new version: fetched again, not served stale.
    let changed = bytes(99, 1000);
    store
        .put_bytes("config.json", bytes::Bytes::from(changed.clone()))
        .await
        .expect("overwrite");
    let third = fetcher
        .fetch(
            &uri("s3://tailor/models/tiny"),
            Some(&dir.path().join("node-a-3")),
        )
        .await
        .expect("third fetch");
    assert!(!third.from_cache);
    assert_ne!(third.version, first.version);
    assert_eq!(
        std::fs::read(dir.path().join("node-a-3/config.json")).expect("read"),
        changed
    );
}

#[test]
fn two_processes_fetching_the_same_thing_share_one_download() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    let proxy = Proxy::start(s3.addr);
    let local = dir.path().join("ckpt");
    let files = checkpoint(&local, 8);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let env = s3_env(&s3.endpoint(), SECRET_KEY);
    let up = run(
        &["--upload", local.to_str().expect("utf8"), "s3://tailor/m"],
        &env,
    );
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    // Slow enough that the two overlap.
    proxy.set_throttle(40 * MIB as u64);
    let env = s3_env(&proxy.endpoint(), SECRET_KEY);
    let cache = dir.path().join("cache");
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let dest = dir.path().join(name);
            fetch_cmd(
                &[
                    "s3://tailor/m",
                    dest.to_str().expect("utf8"),
                    "--cache",
                    cache.to_str().expect("utf8"),
                    "--chunk-mib",
                    "1",
                ],
                &env,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    let mut transferred = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary json");
        transferred.push(v["bytesTransferred"].as_u64().expect("bytes"));
    }
    transferred.sort();
    assert_eq!(
        transferred,
        [0, total],
        "one process downloads, the other waits and links"
    );
    assert_same_files(&dir.path().join("a"), &files);
    assert_same_files(&dir.path().join("b"), &files);
    assert!(
        proxy.bytes_down() < total + total / 4,
        "{} bytes crossed the wire for {total}",
        proxy.bytes_down()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_are_classified_and_name_the_uri() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    let store = Store::open(&uri("s3://tailor"), &ctx(&s3.endpoint())).expect("open");
    store
        .put_bytes("data/train.jsonl", bytes::Bytes::from_static(b"{}\n"))
        .await
        .expect("put");
    let dest = dir.path().join("dest");
    let quick = |c: Context| Fetcher::new(c).with_retry_for(Duration::ZERO);
    let wrong_secret = "wrong-secret-DO-NOT-PRINT";

    let cases = [
        (
            "s3://tailor/data/train.jsonl",
            Context::new(env_for(&s3.endpoint(), wrong_secret)),
            ErrorKind::PermissionDenied,
        ),
        (
            "s3://tailor/data/train.jsonl",
            Context::new(Env::from_pairs([
                ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000"),
                ("AWS_SECRET_ACCESS_KEY", wrong_secret),
                ("AWS_ENDPOINT_URL", s3.endpoint().as_str()),
                ("AWS_ALLOW_HTTP", "true"),
            ])),
            ErrorKind::PermissionDenied,
        ),
        (
            "s3://tailor/data/missing.jsonl",
            ctx(&s3.endpoint()),
            ErrorKind::NotFound,
        ),
        (
            "s3://tailor/no/such/prefix/",
            ctx(&s3.endpoint()),
            ErrorKind::NotFound,
        ),
        (
            "s3://no-such-bucket/x",
            ctx(&s3.endpoint()),
            ErrorKind::NotFound,
        ),
        (
            "s3://tailor/data/train.jsonl",
            // Nothing listens on port 9 of loopback.
            ctx("http://127.0.0.1:9"),
            ErrorKind::Unreachable,
        ),
    ];
    for (u, c, kind) in cases {
        let e = quick(c).fetch(&uri(u), Some(&dest)).await.expect_err(u);
        let text = e.to_string();
        assert_eq!(e.kind, kind, "{u}: {text}");
        assert!(text.contains(u.trim_end_matches('/')), "{u}: {text}");
        assert_no_secret(
            &text,
            &[SECRET_KEY, wrong_secret, "AKIAUNKNOWNKEY000", ACCESS_KEY],
        );
    }
    // Through the binary: the exit code says the kind, stderr names the URI.
    for (u, secret, code) in [
        ("s3://tailor/data/train.jsonl", wrong_secret, 5),
        ("s3://tailor/data/missing.jsonl", SECRET_KEY, 4),
    ] {
        let out = run(
            &[u, dest.to_str().expect("utf8"), "--retry-for", "0"],
            &s3_env(&s3.endpoint(), secret),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{u}: {err}");
        assert!(err.contains(&format!("error: {u}: ")), "{err}");
    }
    let out = run(&["ftp://x/y", "/tmp/x"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported scheme"));
    assert!(files_under(&dest).is_empty(), "{:?}", files_under(&dest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_that_comes_up_later_is_retried_until_it_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("s3");
    let data = bytes(5, 2 * MIB);
    {
        let s3 = server(dir.path());
        let store = Store::open(&uri("s3://tailor"), &ctx(&s3.endpoint())).expect("open");
        store
            .put_bytes("late/data.bin", bytes::Bytes::from(data.clone()))
            .await
            .expect("put");
    }
    // The same data served later on a port that is closed now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let endpoint = format!("http://{addr}");
    let fetcher = Fetcher::new(ctx(&endpoint)).with_retry_for(Duration::from_secs(90));
    let dest = dir.path().join("dest");
    let started = Instant::now();
    let task = tokio::spawn({
        let dest = dest.clone();
        async move {
            fetcher
                .fetch(&uri("s3://tailor/late/data.bin"), Some(&dest))
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !task.is_finished(),
        "the fetch gave up while the endpoint was down"
    );
    let _s3 = LocalS3::start_on(addr, &root, ACCESS_KEY, SECRET_KEY).expect("start late");
    let f = task
        .await
        .expect("join")
        .expect("fetch recovers once the endpoint answers");
    assert_eq!(std::fs::read(dest.join("data.bin")).expect("read"), data);
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(f.bytes_transferred, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncated_transfers_are_retried_and_never_look_complete() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    let proxy = Proxy::start(s3.addr);
    let data = bytes(11, 12 * MIB);
    Store::open(&uri("s3://tailor"), &ctx(&s3.endpoint()))
        .expect("open")
        .put_bytes("t/big.bin", bytes::Bytes::from(data.clone()))
        .await
        .expect("put");

    // Three connections cut mid-body: the ranges are read again from where they stopped.
    proxy.cut_next(3, 2 * MIB as u64);
    let dest = dir.path().join("ok");
    let f = Fetcher::new(ctx(&proxy.endpoint()))
        .with_chunk_size(4 * MIB as u64)
        .with_concurrency(3)
        .with_retry_for(Duration::ZERO)
        .fetch(&uri("s3://tailor/t/big.bin"), Some(&dest))
        .await
        .expect("a few cut connections heal");
    assert_eq!(std::fs::read(dest.join("big.bin")).expect("read"), data);
    assert_eq!(f.files[0].sha256.as_deref(), Some(sha(&data).as_str()));

    // Every connection cut early: the fetch fails, as Unreachable, and leaves nothing that
    // looks like the file.
    proxy.cut_next(usize::MAX, 20_000);
    let dest = dir.path().join("cut");
    let e = Fetcher::new(ctx(&proxy.endpoint()))
        .with_chunk_size(4 * MIB as u64)
        .with_retry_for(Duration::ZERO)
        .fetch(&uri("s3://tailor/t/big.bin"), Some(&dest))
        .await
        .expect_err("every connection is cut");
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.to_string().contains("s3://tailor/t/big.bin"), "{e}");
    assert!(files_under(&dest).is_empty(), "{:?}", files_under(&dest));
    assert!(
        dest.join(".tailor-fetch/partial/big.bin.part").exists(),
        "the partial file stays under its .part name for a resume"
    );
}

/// `"done"` ranges in a resume state file (0 while it does not exist).
fn ranges_done(state: &Path) -> usize {
    std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["done"].as_array().map(Vec::len))
        .unwrap_or(0)
}

#[test]
fn a_fetch_killed_midway_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    let proxy = Proxy::start(s3.addr);
    let data = bytes(13, 24 * MIB);
    write(&dir.path().join("up/weights.bin"), &data);
    let up = run(
        &[
            "--upload",
            dir.path().join("up").to_str().expect("utf8"),
            "s3://tailor/r",
        ],
        &s3_env(&s3.endpoint(), SECRET_KEY),
    );
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    proxy.set_throttle(4 * MIB as u64);
    let env = s3_env(&proxy.endpoint(), SECRET_KEY);
    let dest = dir.path().join("dest");
    let args = [
        "s3://tailor/r",
        dest.to_str().expect("utf8"),
        "--chunk-mib",
        "1",
        "--concurrency",
        "2",
    ];
    let mut child = fetch_cmd(&args, &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let state = dest.join(".tailor-fetch/partial/weights.bin.part.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ranges_done(&state) < 4 {
        assert!(Instant::now() < deadline, "no progress recorded");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished too early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        files_under(&dest).is_empty(),
        "a killed fetch left {:?}",
        files_under(&dest)
    );
    let done_before = ranges_done(&state);

    proxy.set_throttle(0);
    let out = run(&args, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let moved = v["bytesTransferred"].as_u64().expect("bytes");
    assert!(
        moved <= (data.len() - done_before * MIB) as u64,
        "the resumed fetch moved {moved} bytes although {done_before} MiB were on disk"
    );
    assert_eq!(std::fs::read(dest.join("weights.bin")).expect("read"), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checksum_mismatch_fails_and_discards_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    let store = Store::open(&uri("s3://tailor/adapters/a1"), &ctx(&s3.endpoint())).expect("open");
    let data = bytes(21, 3 * MIB);
    write(&dir.path().join("a1/adapter_model.safetensors"), &data);
    store
        .upload_dir(&dir.path().join("a1"), "")
        .await
        .expect("upload");
    // Bit rot on the server's disk: same size, other bytes; the recorded sha256 stays.
    let on_disk = s3.object_path(BUCKET, "adapters/a1/adapter_model.safetensors");
    let mut rotten = std::fs::read(&on_disk).expect("read");
    rotten[1234] ^= 0xff;
    std::fs::write(&on_disk, &rotten).expect("corrupt");

    let dest = dir.path().join("dest");
    let e = Fetcher::new(ctx(&s3.endpoint()))
        .with_retry_for(Duration::ZERO)
        .fetch(&uri("s3://tailor/adapters/a1"), Some(&dest))
        .await
        .expect_err("corrupt bytes");
    assert_eq!(e.kind, ErrorKind::Corrupt, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("s3://tailor/adapters/a1/adapter_model.safetensors"),
        "{text}"
    );
    assert!(
        text.contains(&sha(&data)) && text.contains(&sha(&rotten)),
        "{text}"
    );
    assert!(files_under(&dest).is_empty(), "{:?}", files_under(&dest));
    assert!(
        !dest
            .join(".tailor-fetch/partial/adapter_model.safetensors.part")
            .exists()
    );

    // A checksum the caller requires (a LoraAdapter's sha256) is checked the same way.
    std::fs::write(&on_disk, &data).expect("restore");
    let e = Fetcher::new(ctx(&s3.endpoint()))
        .with_retry_for(Duration::ZERO)
        .expect_sha256("adapter_model.safetensors", "0".repeat(64))
        .fetch(&uri("s3://tailor/adapters/a1"), Some(&dest))
        .await
        .expect_err("the caller's checksum differs");
    assert_eq!(e.kind, ErrorKind::Corrupt);
    assert!(e.to_string().contains("the caller expects"), "{e}");
    let ok = Fetcher::new(ctx(&s3.endpoint()))
        .expect_sha256("adapter_model.safetensors", sha(&data))
        .fetch(&uri("s3://tailor/adapters/a1"), Some(&dest))
        .await
        .expect("matching checksum");
    assert_eq!(ok.files.len(), 1);
    // Once a copy is here, a caller expecting other bytes is refused all the same (the copy
    // stays, for callers expecting it), with and without a cache.
    let cache = dir.path().join("cache");
    for cached in [None, Some(cache.clone()), Some(cache)] {
        let e = Fetcher::new(ctx(&s3.endpoint()))
            .with_cache(cached.clone())
            .expect_sha256("adapter_model.safetensors", "1".repeat(64))
            .fetch(&uri("s3://tailor/adapters/a1"), Some(&dest))
            .await
            .expect_err("a copy with other bytes than expected");
        assert_eq!(e.kind, ErrorKind::Corrupt, "{cached:?}: {e}");
        let again = Fetcher::new(ctx(&s3.endpoint()))
            .with_cache(cached.clone())
            .fetch(&uri("s3://tailor/adapters/a1"), Some(&dest))
            .await
            .expect("the copy is still there");
        assert_eq!(
            std::fs::read(dest.join("adapter_model.safetensors")).expect("read"),
            data
        );
        assert!(again.files.len() == 1, "{cached:?}");
    }
}

#[test]
fn no_secret_reaches_output_or_logs_even_at_debug() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = server(dir.path());
    write(&dir.path().join("up/x.bin"), &bytes(1, MIB));
    let mut all = String::new();
    let dest = dir.path().join("d");
    let d = dest.to_str().expect("utf8");
    let up = dir.path().join("up");
    let runs: [(&[&str], &str); 6] = [
        (
            &["--upload", up.to_str().expect("utf8"), "s3://tailor/x"],
            SECRET_KEY,
        ),
        (&["s3://tailor/x", d], SECRET_KEY),
        (&["s3://tailor/x", d, "--log-format", "json"], SECRET_KEY),
        (
            &["s3://tailor/x", d, "--retry-for", "0"],
            "wrong-secret-DO-NOT-PRINT",
        ),
        (&["s3://tailor/nope", d, "--retry-for", "0"], SECRET_KEY),
        (
            &[
                "s3://tailor/x",
                d,
                "--retry-for",
                "0",
                "--log-format",
                "json",
            ],
            "wrong-secret-DO-NOT-PRINT",
        ),
    ];
    for (args, secret) in runs {
        let out = run(args, &s3_env(&s3.endpoint(), secret));
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // The runs did log (debug level), and did fail where they should.
    assert!(
        all.contains("SignatureDoesNotMatch") || all.contains("PermissionDenied"),
        "{all}"
    );
    assert!(
        all.contains("\"level\":\"DEBUG\"") || all.contains("DEBUG"),
        "{all}"
    );
    assert_no_secret(&all, &[SECRET_KEY, "wrong-secret-DO-NOT-PRINT", ACCESS_KEY]);
}

#[test]
fn the_binary_documents_every_flag() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--upload",
        "--cache",
        "--concurrency",
        "--chunk-mib",
        "--retry-for",
        "--progress-every",
        "--expect-sha256",
        "--pvc-mount",
        "--log-format",
        "--version",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
    let out = run(&["--version"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tailor-fetch "));
    let out = run(&["s3://bkt/k"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "DEST is required for a download"
    );
}
