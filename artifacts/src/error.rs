//! One error type for the whole layer: the URI, a fixed kind callers decide on (retry or fail),
//! and a message that was passed through the credential redactor when it was made.

use std::fmt;

use crate::credentials::Redactor;

/// What went wrong, in the terms a caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No object, prefix, repository, revision or file at the URI.
    NotFound,
    /// The credentials were refused (401/403), missing, or lack access (a gated Hub repo).
    PermissionDenied,
    /// The endpoint did not answer, answered 5xx/429, or the connection broke mid-transfer.
    /// Retrying with back-off can heal it.
    Unreachable,
    /// The bytes are not what the source says they are (checksum or size mismatch).
    Corrupt,
    /// The source changed during the transfer (its ETag moved); a retry fetches the new one.
    Changed,
    /// The URI, the configuration or the request cannot work (bad URI, unsupported operation).
    Invalid,
    /// Reading or writing the local disk failed (full disk, permissions).
    Local,
}

impl ErrorKind {
    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Unreachable | Self::Changed)
    }

    /// A fixed short name (an Event or condition reason, a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "NotFound",
            Self::PermissionDenied => "PermissionDenied",
            Self::Unreachable => "Unreachable",
            Self::Corrupt => "ChecksumMismatch",
            Self::Changed => "SourceChanged",
            Self::Invalid => "Invalid",
            Self::Local => "LocalIO",
        }
    }

    /// The process exit code `tailor-fetch` uses for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Invalid => 3,
            Self::NotFound => 4,
            Self::PermissionDenied => 5,
            Self::Unreachable => 6,
            Self::Corrupt => 7,
            Self::Changed => 8,
            Self::Local => 9,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An artifact error: `<uri>: <Kind>: <message>`. The message never holds a credential value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{uri}: {kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub uri: String,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error whose message is redacted with `redactor` (use for any text a library made).
    pub fn new(
        kind: ErrorKind,
        uri: impl fmt::Display,
        message: impl fmt::Display,
        redactor: &Redactor,
    ) -> Self {
        Self {
            kind,
            uri: redactor.redact(&uri.to_string()),
            message: redactor.redact(&message.to_string()),
        }
    }

    /// An error whose message this crate wrote itself from non-secret parts.
    pub fn plain(kind: ErrorKind, uri: impl fmt::Display, message: impl Into<String>) -> Self {
        Self {
            kind,
            uri: uri.to_string(),
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The same error about another URI (a file inside a fetched prefix, say).
    pub fn with_uri(mut self, uri: impl fmt::Display) -> Self {
        self.uri = uri.to_string();
        self
    }
}

/// The whole `source()` chain of an error, joined by ": " (what a library said and why).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // Wrapping errors often repeat their source's text; keep each part once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// The kind of an HTTP status an object store or the Hub answered with.
pub fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::PermissionDenied,
        404 | 410 => ErrorKind::NotFound,
        412 => ErrorKind::Changed,
        408 | 429 | 500..=599 => ErrorKind::Unreachable,
        _ => ErrorKind::Invalid,
    }
}

/// Classifies an `object_store` error: its variant where it says enough, else the HTTP
/// transport error or status in its chain.
pub fn kind_of_object_store(e: &object_store::Error) -> ErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        E::Precondition { .. } | E::NotModified { .. } => ErrorKind::Changed,
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }
        | E::AlreadyExists { .. } => ErrorKind::Invalid,
        E::JoinError { .. } => ErrorKind::Local,
        _ => kind_of_chain(e),
    }
}

fn kind_of_chain(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return match h.kind() {
                K::Connect | K::Request | K::Timeout | K::Interrupted | K::Decode => {
                    ErrorKind::Unreachable
                }
                _ => ErrorKind::Invalid,
            };
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return kind_of_io(io);
        }
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            return kind_of_reqwest(r);
        }
        cur = err.source();
    }
    // object_store reports other statuses only in text ("… non-2xx status code: 503 …").
    let text = chain(e);
    match text
        .split("status code: ")
        .nth(1)
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
    {
        Some(status) => kind_of_status(status),
        None => ErrorKind::Invalid,
    }
}

pub fn kind_of_io(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::PermissionDenied => ErrorKind::PermissionDenied,
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::TimedOut
        | K::UnexpectedEof
        | K::BrokenPipe => ErrorKind::Unreachable,
        _ => ErrorKind::Local,
    }
}

pub fn kind_of_reqwest(e: &reqwest::Error) -> ErrorKind {
    if let Some(s) = e.status() {
        return kind_of_status(s.as_u16());
    }
    if e.is_builder() {
        ErrorKind::Invalid
    } else {
        // connect, timeout, request, body, decode: the network, which may heal.
        ErrorKind::Unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(kind_of_status(403), ErrorKind::PermissionDenied);
        assert_eq!(kind_of_status(401), ErrorKind::PermissionDenied);
        assert_eq!(kind_of_status(404), ErrorKind::NotFound);
        assert_eq!(kind_of_status(503), ErrorKind::Unreachable);
        assert_eq!(kind_of_status(429), ErrorKind::Unreachable);
        assert_eq!(kind_of_status(400), ErrorKind::Invalid);
        assert!(ErrorKind::Unreachable.is_retryable());
        assert!(!ErrorKind::PermissionDenied.is_retryable());
    }

    #[test]
    fn messages_are_redacted_and_name_the_uri() {
        let r = Redactor::new(["s3cr3t-value".to_string()]);
        let e = Error::new(
            ErrorKind::PermissionDenied,
            "s3://b/k",
            "signature for s3cr3t-value did not match",
            &r,
        );
        let text = e.to_string();
        assert!(text.starts_with("s3://b/k: PermissionDenied: "), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
    }
}
