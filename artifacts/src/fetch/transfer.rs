//! The download stage: each file cut into ranges, fetched several at a time across all files
//! and written in place into `<file>.part`, with a small state file recording the ranges done
//! (what a resumed fetch skips); a range cut short is read again from where it stopped.

use std::collections::BTreeSet;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::{Plan, RemoteFile, Source};
use super::verify::finalize;
use super::{FetchedFile, Fetcher, backoff, jitter, local, write_atomically};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;

const CHUNK_ATTEMPTS: u32 = 5;
const WRITE_BUFFER: usize = 1 << 20;
const HASH_BUFFER: usize = 1 << 20;

/// Resume state of one `.part` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartState {
    size: u64,
    etag: Option<String>,
    chunk_size: u64,
    done: BTreeSet<usize>,
}

pub(super) struct FileTask {
    pub(super) remote: RemoteFile,
    pub(super) file: File,
    pub(super) part: PathBuf,
    pub(super) state_path: PathBuf,
    pub(super) target: PathBuf,
    chunks: Vec<Range<u64>>,
    state: Mutex<PartState>,
    /// The sha256 a read response carried (object metadata), when the listing had none.
    pub(super) seen_sha256: Mutex<Option<String>>,
    pub(super) expected: Option<String>,
    /// The sha256 of the ranges done so far from the start of the file, and how many that is.
    hashed: Mutex<(Sha256, usize)>,
}

impl FileTask {
    /// Whether the file's bytes are checked against a sha256 (known once a read answered).
    pub(super) fn wants_sha256(&self) -> bool {
        self.expected.is_some()
            || self.remote.sha256.is_some()
            || self
                .seen_sha256
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// Hashes the ranges done in a row after those hashed already, reading them back from the
    /// `.part` (still in the page cache), so the sha256 grows while later ranges download and
    /// only the last ones are left when the file completes. Blocking.
    pub(super) fn hash_done_ranges(&self) -> std::io::Result<()> {
        let mut hashed = self.hashed.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = vec![0u8; HASH_BUFFER];
        loop {
            let next = hashed.1;
            let done = self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .done
                .contains(&next);
            if !done {
                return Ok(());
            }
            let r = self.chunks[next].clone();
            let mut at = r.start;
            while at < r.end {
                let n = (r.end - at).min(HASH_BUFFER as u64) as usize;
                self.file.read_exact_at(&mut buf[..n], at)?;
                hashed.0.update(&buf[..n]);
                at += n as u64;
            }
            hashed.1 += 1;
        }
    }

    /// The sha256 of the whole file: what [`FileTask::hash_done_ranges`] has not hashed yet is
    /// hashed now. Blocking; call once every range is done.
    pub(super) fn sha256(&self) -> std::io::Result<String> {
        self.hash_done_ranges()?;
        let hashed = self.hashed.lock().unwrap_or_else(|e| e.into_inner());
        if hashed.1 != self.chunks.len() {
            return Err(std::io::Error::other("not every range of the file is done"));
        }
        Ok(hex::encode(hashed.0.clone().finalize()))
    }
}

/// `n` bytes cut into ranges of `chunk` bytes.
pub(crate) fn chunk_ranges(n: u64, chunk: u64) -> Vec<Range<u64>> {
    let chunk = chunk.max(1);
    (0..n.div_ceil(chunk))
        .map(|i| i * chunk..((i + 1) * chunk).min(n))
        .collect()
}

impl Fetcher {
    /// Downloads every file of `plan` into `staging` (resuming what an earlier attempt left
    /// there) and returns them verified.
    pub(super) async fn download(
        &self,
        plan: &Plan,
        staging: &Path,
        counter: &Arc<AtomicU64>,
    ) -> Result<Vec<FetchedFile>> {
        let u = plan.identity.clone();
        let version_file = staging.join(".version");
        let stale = std::fs::read_to_string(&version_file).ok().as_deref() != Some(&plan.version);
        if stale && staging.exists() {
            std::fs::remove_dir_all(staging)
                .map_err(|e| local(&u, "clearing an older partial fetch", &e))?;
        }
        std::fs::create_dir_all(staging)
            .and_then(|()| std::fs::write(&version_file, &plan.version))
            .map_err(|e| local(&u, &format!("creating {}", staging.display()), &e))?;

        let mut tasks = Vec::new();
        let mut done_files = Vec::new();
        for f in &plan.files {
            let target = staging.join(&f.rel);
            let expected = self.expected.get(&f.rel).cloned();
            if std::fs::metadata(&target).is_ok_and(|m| m.len() == f.size) {
                done_files.push(FetchedFile {
                    path: f.rel.clone(),
                    size: f.size,
                    sha256: expected.or_else(|| f.sha256.clone()),
                });
                continue;
            }
            tasks.push(Arc::new(self.open_task(plan, f, &target, expected)?));
        }
        let remaining: u64 = tasks
            .iter()
            .map(|t| {
                let st = t.state.lock().unwrap_or_else(|e| e.into_inner());
                t.chunks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !st.done.contains(i))
                    .map(|(_, r)| r.end - r.start)
                    .sum::<u64>()
            })
            .sum();
        let progress = Progress::start(&u, remaining, counter.clone(), self.progress_every);

        let jobs: Vec<(Arc<FileTask>, usize)> = tasks
            .iter()
            .flat_map(|t| {
                let st = t.state.lock().unwrap_or_else(|e| e.into_inner());
                (0..t.chunks.len())
                    .filter(|i| !st.done.contains(i))
                    .map(|i| (t.clone(), i))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Files whose ranges are all done already (or that are empty) only need verifying.
        let ready: Vec<Arc<FileTask>> = tasks
            .iter()
            .filter(|t| {
                let st = t.state.lock().unwrap_or_else(|e| e.into_inner());
                st.done.len() == t.chunks.len()
            })
            .cloned()
            .collect();
        let source = &plan.source;
        let results: Vec<Option<FetchedFile>> = stream::iter(jobs)
            .map(|(task, i)| async move { self.run_chunk(source, &task, i, counter).await })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
            .inspect_err(|_| progress.stop())?;
        progress.stop();
        done_files.extend(results.into_iter().flatten());
        for t in ready {
            done_files.push(finalize(t).await?);
        }
        done_files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(done_files)
    }

    fn open_task(
        &self,
        plan: &Plan,
        f: &RemoteFile,
        target: &Path,
        expected: Option<String>,
    ) -> Result<FileTask> {
        let u = plan.identity.as_str();
        let part = target.with_file_name(format!(
            "{}.part",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file")
        ));
        let state_path = part.with_file_name(format!(
            "{}.json",
            part.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file.part")
        ));
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| local(u, &format!("creating {}", p.display()), &e))?;
        }
        let fresh = PartState {
            size: f.size,
            etag: f.etag.clone(),
            chunk_size: self.chunk_size,
            done: BTreeSet::new(),
        };
        let saved: Option<PartState> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let resumable = saved.as_ref().is_some_and(|s| {
            s.size == fresh.size
                && s.etag == fresh.etag
                && s.chunk_size == fresh.chunk_size
                && std::fs::metadata(&part).is_ok_and(|m| m.len() == f.size)
        });
        let state = match saved {
            Some(s) if resumable => {
                tracing::info!(file = %f.rel, ranges_done = s.done.len(), "resuming a partial file");
                s
            }
            _ => fresh,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(|e| local(u, &format!("opening {}", part.display()), &e))?;
        if !resumable {
            file.set_len(0)
                .and_then(|()| file.set_len(f.size))
                .map_err(|e| local(u, &format!("sizing {}", part.display()), &e))?;
            write_atomically(&state_path, &serde_json::to_vec(&state).unwrap_or_default())
                .map_err(|e| local(u, "writing resume state", &e))?;
        }
        Ok(FileTask {
            remote: f.clone(),
            file,
            part,
            state_path,
            target: target.to_path_buf(),
            chunks: chunk_ranges(f.size, self.chunk_size),
            state: Mutex::new(state),
            seen_sha256: Mutex::new(None),
            expected,
            hashed: Mutex::new((Sha256::new(), 0)),
        })
    }

    /// Fetches one range (retrying a cut or failed read from where it stopped); when it was the
    /// file's last, verifies and publishes the file.
    async fn run_chunk(
        &self,
        source: &Source,
        task: &Arc<FileTask>,
        index: usize,
        counter: &Arc<AtomicU64>,
    ) -> Result<Option<FetchedFile>> {
        let range = task.chunks[index].clone();
        let mut written = 0u64;
        let mut attempt = 0u32;
        loop {
            match read_range(
                source,
                task,
                range.start + written..range.end,
                &mut written,
                counter,
            )
            .await
            {
                Ok(()) => break,
                Err(e) if e.kind == ErrorKind::Unreachable && attempt + 1 < CHUNK_ATTEMPTS => {
                    attempt += 1;
                    let wait = jitter(backoff(
                        attempt,
                        Duration::from_millis(200),
                        Duration::from_secs(5),
                    ));
                    tracing::warn!(file = %task.remote.rel, range_start = range.start, error = %e, attempt, "range read failed, retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
        let all_done = {
            let mut st = task.state.lock().unwrap_or_else(|e| e.into_inner());
            st.done.insert(index);
            write_atomically(
                &task.state_path,
                &serde_json::to_vec(&*st).unwrap_or_default(),
            )
            .map_err(|e| local(&task.remote.uri, "writing resume state", &e))?;
            st.done.len() == task.chunks.len()
        };
        if all_done {
            Ok(Some(finalize(task.clone()).await?))
        } else {
            if task.wants_sha256() {
                // Hash what is done in a row now, not all of it once the last range arrives.
                let t = task.clone();
                tokio::task::spawn_blocking(move || t.hash_done_ranges())
                    .await
                    .map_err(|e| Error::plain(ErrorKind::Local, &task.remote.uri, e.to_string()))?
                    .map_err(|e| local(&task.remote.uri, "hashing the downloaded ranges", &e))?;
            }
            Ok(None)
        }
    }
}

/// Reads `range` of a file into its `.part` at the same offsets, counting bytes into
/// `written`; a response that ends early is an `Unreachable` error (the caller resumes).
async fn read_range(
    source: &Source,
    task: &FileTask,
    range: Range<u64>,
    written: &mut u64,
    counter: &AtomicU64,
) -> Result<()> {
    let want = range.end - range.start;
    let mut s = match source {
        Source::Store(store) => {
            let (s, sha) = store
                .read_pinned(
                    &task.remote.key,
                    Some(range.clone()),
                    task.remote.etag.as_deref(),
                )
                .await?;
            if sha.is_some() {
                *task.seen_sha256.lock().unwrap_or_else(|e| e.into_inner()) = sha;
            }
            s
        }
        Source::Hub(hub, rev) => hub.read(rev, &task.remote.key, Some(range.clone())).await?,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUFFER.min(want as usize));
    let mut got = 0u64;
    // `end`: the offset just after the buffered bytes.
    let flush = |buf: &mut Vec<u8>, end: u64| -> Result<()> {
        let at = end - buf.len() as u64;
        task.file.write_all_at(buf, at).map_err(|e| {
            local(
                &task.remote.uri,
                &format!("writing {}", task.part.display()),
                &e,
            )
        })?;
        buf.clear();
        Ok(())
    };
    while let Some(piece) = s.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                // Keep what arrived: the retry continues after it.
                flush(&mut buf, range.start + got)?;
                *written += got;
                return Err(e);
            }
        };
        if got + piece.len() as u64 > want {
            return Err(Error::plain(
                ErrorKind::Corrupt,
                &task.remote.uri,
                format!(
                    "the source sent more than the {want} bytes asked for at offset {}",
                    range.start
                ),
            ));
        }
        counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
        got += piece.len() as u64;
        buf.extend_from_slice(&piece);
        if buf.len() >= WRITE_BUFFER {
            flush(&mut buf, range.start + got)?;
        }
    }
    flush(&mut buf, range.start + got)?;
    *written += got;
    if got < want {
        return Err(Error::plain(
            ErrorKind::Unreachable,
            &task.remote.uri,
            format!(
                "the response ended after {got} of {want} bytes (offset {}): truncated",
                range.start
            ),
        ));
    }
    Ok(())
}

/// Checks size and sha256 of a completed `.part` and renames it to its name.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_file_exactly() {
        assert_eq!(chunk_ranges(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(chunk_ranges(8, 4), vec![0..4, 4..8]);
        assert!(chunk_ranges(0, 4).is_empty());
        assert_eq!(chunk_ranges(3, 0), vec![0..1, 1..2, 2..3]);
    }
}
