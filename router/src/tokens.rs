//! Bearer tokens read from files, as Kubernetes mounts Secrets: the token the router presents
//! to the serving pods (`--backend-token-file`) and the one `/stats` requires
//! (`--admin-token-file`).
//!
//! A file is re-read on the config reload tick and a changed token swaps in atomically: a
//! request uses the token current when it is sent, so a Secret update drops no request. A file
//! that turns unreadable or empty keeps the previous token (and is reported). The value never
//! reaches a log line, an error message or `Debug` output: errors name the path only, and the
//! header value is marked sensitive.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// Why a token file was not (re)loaded. Never carries the file's content.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "the token file {path} holds characters an HTTP header cannot carry (expected one line of visible ASCII)"
    )]
    NotAHeader { path: PathBuf },
}

/// One loaded token: its SHA-256 (what presented tokens are compared with) and the
/// `Authorization` header that presents it.
struct Loaded {
    sha256: [u8; 32],
    bearer: HeaderValue,
}

/// A token file and the token it held when last read.
pub struct TokenFile {
    path: PathBuf,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("token", &"<redacted>")
            .finish()
    }
}

fn read_token(path: &Path) -> Result<Loaded, TokenError> {
    let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| TokenError::NotAHeader {
        path: path.to_path_buf(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotAHeader {
            path: path.to_path_buf(),
        });
    }
    let mut bearer =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| TokenError::NotAHeader {
            path: path.to_path_buf(),
        })?;
    bearer.set_sensitive(true);
    Ok(Loaded {
        sha256: Sha256::digest(token.as_bytes()).into(),
        bearer,
    })
}

impl TokenFile {
    /// Reads the token at `path` (following symlinks, so a Secret's `..data` swap is seen).
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let loaded = read_token(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the file; returns whether the token changed. On error the previous token stays.
    pub fn reload_if_changed(&self) -> Result<bool, TokenError> {
        let fresh = read_token(&self.path)?;
        if fresh.sha256 == self.current().sha256 {
            return Ok(false);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        Ok(true)
    }

    /// `Authorization: Bearer <token>`, marked sensitive.
    pub fn bearer(&self) -> HeaderValue {
        self.current().bearer.clone()
    }

    /// Whether a request presents this token (`Authorization: Bearer <token>`). Compared by
    /// SHA-256, so the comparison's timing says nothing about the token.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = crate::auth::presented_key(headers) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest == self.current().sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn a_token_file_is_reread_and_a_bad_one_keeps_the_previous_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "tok-one\n").expect("write");
        let t = TokenFile::load(&path).expect("load");
        assert!(t.accepts(&headers("Bearer tok-one")));
        assert!(!t.accepts(&headers("Bearer tok-two")));
        assert!(!t.accepts(&HeaderMap::new()));
        assert_eq!(t.bearer().to_str().ok(), Some("Bearer tok-one"));
        assert!(t.bearer().is_sensitive());
        assert!(!t.reload_if_changed().expect("same"));

        std::fs::write(&path, "tok-two").expect("write");
        assert!(t.reload_if_changed().expect("changed"));
        assert!(t.accepts(&headers("Bearer tok-two")));
        assert!(!t.accepts(&headers("Bearer tok-one")));

        for (content, expected) in [("  \n", "is empty"), ("a b", "cannot carry")] {
            std::fs::write(&path, content).expect("write");
            let e = t.reload_if_changed().expect_err(content).to_string();
            assert!(e.contains(expected) && e.contains("token"), "{e}");
            assert!(t.accepts(&headers("Bearer tok-two")), "previous token kept");
        }
        std::fs::remove_file(&path).expect("rm");
        let e = t.reload_if_changed().expect_err("missing").to_string();
        assert!(e.contains("cannot read"), "{e}");
        assert!(t.accepts(&headers("Bearer tok-two")));
    }

    #[test]
    fn the_value_is_in_no_error_and_no_debug_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-value").expect("write");
        let t = TokenFile::load(&path).expect("load");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(!format!("{:?}", t.bearer()).contains("s3cr3t"));
        std::fs::write(&path, "s3cr3t value\twith tab").expect("write");
        let e = t.reload_if_changed().expect_err("bad");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(!format!("{e:?}").contains("s3cr3t"), "{e:?}");
    }
}
