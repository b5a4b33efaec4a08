//! Test support: a TCP proxy that counts the bytes a server sends and can cut responses short
//! (a real truncated transfer: the connection closes mid-body), and deterministic test data.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Credentials the tests' S3 server accepts. Distinctive, so a grep for them cannot miss.
pub const ACCESS_KEY: &str = "AKIATAILORTESTKEY01";
pub const SECRET_KEY: &str = "tailor-test-secret-VALUE/with+chars=";

/// Forwards loopback connections to `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Bytes sent from the server to clients.
    pub down: Arc<AtomicU64>,
    /// Connections still to cut; each cut one closes after `cut_after` response bytes.
    pub cuts_left: Arc<AtomicUsize>,
    pub cut_after: Arc<AtomicU64>,
    /// Bytes per second the proxy lets through downstream (0: no limit).
    pub throttle: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let p = Self {
            addr,
            down: Arc::new(AtomicU64::new(0)),
            cuts_left: Arc::new(AtomicUsize::new(0)),
            cut_after: Arc::new(AtomicU64::new(u64::MAX)),
            throttle: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (down, cuts, cut_after, throttle, stop) = (
            p.down.clone(),
            p.cuts_left.clone(),
            p.cut_after.clone(),
            p.throttle.clone(),
            p.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let cut = cuts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let limit = if cut {
                    cut_after.load(Ordering::SeqCst)
                } else {
                    u64::MAX
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || pipe(c2, s2, None, u64::MAX, None));
                let down = down.clone();
                let throttle = throttle.clone();
                std::thread::spawn(move || pipe(server, client, Some(down), limit, Some(throttle)));
            }
        });
        p
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the next `n` connections after `after` response bytes each.
    pub fn cut_next(&self, n: usize, after: u64) {
        self.cut_after.store(after, Ordering::SeqCst);
        self.cuts_left.store(n, Ordering::SeqCst);
    }

    pub fn set_throttle(&self, bytes_per_second: u64) {
        self.throttle.store(bytes_per_second, Ordering::SeqCst);
    }

    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    count: Option<Arc<AtomicU64>>,
    limit: u64,
    throttle: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = n.min((limit - sent).try_into().unwrap_or(usize::MAX));
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if sent >= limit {
            break;
        }
        let bps = throttle.as_ref().map_or(0, |t| t.load(Ordering::Relaxed));
        if bps > 0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / bps as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// `n` pseudo-random bytes from `seed` (SplitMix64), the same on every run.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, data).expect("write");
}

/// Every file under `dir` (relative paths), skipping the fetcher's bookkeeping.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = tailor_artifacts::store::local_files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !f.starts_with(".tailor-fetch/"))
        .collect();
    out.sort();
    out
}

pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "a secret value appears in: {text}");
    }
}
