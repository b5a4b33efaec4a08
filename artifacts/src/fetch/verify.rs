//! The verify stage: size always, sha256 where the source gives one or the caller asks for
//! one; only a verified file is renamed from `.part` to its name. A copy already here (cache
//! entry, earlier fetch) is checked against the caller's expected sha256s.

use std::path::Path;
use std::sync::Arc;

use super::publish::Marker;
use super::transfer::FileTask;
use super::{FetchedFile, Fetcher, local};
use crate::error::{Error, ErrorKind, Result};
use crate::uri::ArtifactUri;

impl Fetcher {
    /// A copy already here, checked against the caller's expected sha256s (`expect_sha256`):
    /// what it was verified against when fetched, or else its bytes hashed now. A mismatch is
    /// `Corrupt` and leaves the copy alone (another caller may expect exactly it).
    pub(super) async fn as_expected(
        &self,
        uri: &ArtifactUri,
        dir: &Path,
        mut m: Marker,
    ) -> Result<Marker> {
        for (path, want) in &self.expected {
            let Some(f) = m.files.iter_mut().find(|f| &f.path == path) else {
                continue;
            };
            if f.sha256.as_deref() == Some(want.as_str()) {
                continue;
            }
            let file = dir.join(path);
            let (got, _) = tokio::task::spawn_blocking(move || crate::store::sha256_file(&file))
                .await
                .map_err(|e| Error::plain(ErrorKind::Local, uri, e.to_string()))?
                .map_err(|e| local(&uri.to_string(), &format!("hashing {path}"), &e))?;
            if &got != want {
                return Err(Error::plain(
                    ErrorKind::Corrupt,
                    uri.join(path),
                    format!("sha256 is {got}, expected {want}"),
                ));
            }
            f.sha256 = Some(got);
        }
        Ok(m)
    }
}

pub(super) async fn finalize(task: Arc<FileTask>) -> Result<FetchedFile> {
    tokio::task::spawn_blocking(move || {
        let rel = &task.remote.rel;
        let uri = &task.remote.uri;
        let len = task
            .file
            .metadata()
            .map_err(|e| local(uri, "reading the downloaded file", &e))?
            .len();
        if len != task.remote.size {
            return Err(Error::plain(
                ErrorKind::Corrupt,
                uri,
                format!("{len} bytes on disk, the source has {}", task.remote.size),
            ));
        }
        let seen = task
            .seen_sha256
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut wants: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &task.expected {
            wants.push(("the caller expects", s.clone()));
        }
        if let Some(s) = task.remote.sha256.clone().or(seen) {
            wants.push(("the source records", s));
        }
        if !wants.is_empty() {
            let got = task
                .sha256()
                .map_err(|e| local(uri, "hashing the downloaded file", &e))?;
            if let Some((who, want)) = wants.iter().find(|(_, w)| *w != got) {
                let _ = std::fs::remove_file(&task.part);
                let _ = std::fs::remove_file(&task.state_path);
                return Err(Error::plain(
                    ErrorKind::Corrupt,
                    uri,
                    format!("sha256 of the downloaded bytes is {got}, {who} {want}; the file was discarded"),
                ));
            }
        }
        std::fs::rename(&task.part, &task.target)
            .map_err(|e| local(uri, "renaming the verified file into place", &e))?;
        let _ = std::fs::remove_file(&task.state_path);
        Ok(FetchedFile {
            path: rel.clone(),
            size: task.remote.size,
            sha256: wants.into_iter().next().map(|(_, s)| s),
        })
    })
    .await
    .map_err(|e| Error::plain(ErrorKind::Local, "fetch", e.to_string()))?
}
