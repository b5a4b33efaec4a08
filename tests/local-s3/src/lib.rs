//! A local S3-compatible server that tests and benchmarks start themselves: `s3s-fs`, the
//! file-system backend of the `s3s` crate, on a loopback port. Beside it, [`hub::LocalHub`]:
//! a local endpoint serving the Hugging Face Hub's layout.
//!
//! Why s3s-fs rather than moto's server: it checks every request's SigV4 signature (a wrong
//! secret is a real `403 SignatureDoesNotMatch`, an unknown key `403 InvalidAccessKeyId`; moto
//! accepts any credentials unless IAM emulation is set up), it answers ranged GETs by seeking
//! the stored file (moto 5.2 slices the whole object in memory for every range, so a parallel
//! ranged fetch of a 2 GB checkpoint would measure moto), objects are files on disk, errors are
//! S3's XML with S3's codes (`NoSuchKey`, `NoSuchBucket`), multipart uploads and user metadata
//! (`x-amz-meta-*`) work, and it is a Rust crate the workspace builds — no extra runtime.
//! What it does not reproduce: AWS's ETag of multipart uploads (`<md5 of md5s>-<parts>`),
//! server-side encryption, versioning, and `If-Match` on GET.

pub mod hub;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// A running server; stopped when dropped.
pub struct LocalS3 {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub access_key: String,
    pub secret_key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalS3 {
    /// Serves `root` (each directory a bucket) on a free loopback port.
    pub fn start(root: &Path, access_key: &str, secret_key: &str) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, root, access_key, secret_key)
    }

    /// Serves `root` on `addr` (a fixed port lets a test start the server after a client
    /// began retrying against it).
    pub fn start_on(
        addr: SocketAddr,
        root: &Path,
        access_key: &str,
        secret_key: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut b = S3ServiceBuilder::new(store::Store::new(root)?);
        b.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = b.build();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        r = listener.accept() => {
                            let Ok((socket, _)) = r else { continue };
                            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
            rt.shutdown_background();
        });
        ready_rx.recv()??;
        Ok(Self {
            addr,
            root: root.to_path_buf(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A bucket is a directory under the root.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.root.join(name))?;
        Ok(())
    }

    /// Where the server keeps an object's bytes (for tests that corrupt them behind its back).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// The standard AWS variables a client needs for this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
