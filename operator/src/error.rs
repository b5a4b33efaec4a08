//! Errors of the reconcilers, each with a fixed category.
//!
//! The category is the Event reason, the condition reason and the `category` label of
//! `tailor_operator_reconcile_errors_total`; the full chain goes into the Event note.

/// Fixed, short error categories (a closed set: safe as a metric label). The variant name is
/// the reason string (PascalCase, as Kubernetes spells reasons).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::IntoStaticStr,
    strum::VariantArray,
    strum::Display,
)]
pub enum Category {
    /// The spec cannot be acted on; waits for a change.
    InvalidSpec,
    /// A FineTuneJob's Dataset does not exist (yet).
    DatasetNotFound,
    /// A FineTuneJob's Dataset exists but is not Ready.
    DatasetNotReady,
    /// A Dataset's source (ConfigMap, claim) does not exist.
    SourceNotFound,
    /// A Secret the spec names does not exist (yet) or lacks the key.
    SecretNotFound,
    /// Server-side apply of a child or of status failed.
    ApplyFailed,
    /// Reading from the API failed.
    KubeApiError,
    /// A prepare or train Job failed.
    JobFailed,
    /// An artifact could not be read (yet).
    ArtifactUnavailable,
    /// An adapter artifact does not match its declaration.
    VerificationFailed,
    /// Another object already holds the name this one needs.
    NameConflict,
}

impl Category {
    /// Every category, for pre-registering metric series.
    pub const ALL: &'static [Category] = <Category as strum::VariantArray>::VARIANTS;

    /// PascalCase name, as Kubernetes spells reasons.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Transient errors requeue with backoff; the others wait for a change of the object (or
    /// of what it references, which the controllers watch).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Category::ApplyFailed
                | Category::KubeApiError
                | Category::ArtifactUnavailable
                | Category::SecretNotFound
        )
    }
}

/// A reconcile error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSpec(String),
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("artifact {uri}: {message}")]
    Artifact { uri: String, message: String },
    #[error("{0}")]
    Verification(String),
    #[error("{0}")]
    NameConflict(String),
    #[error("{0}")]
    SecretNotFound(String),
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::InvalidSpec(_) => Category::InvalidSpec,
            Error::Apply { .. } => Category::ApplyFailed,
            Error::Kube { .. } => Category::KubeApiError,
            Error::Artifact { .. } => Category::ArtifactUnavailable,
            Error::Verification(_) => Category::VerificationFailed,
            Error::NameConflict(_) => Category::NameConflict,
            Error::SecretNotFound(_) => Category::SecretNotFound,
        }
    }

    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }

    pub fn apply(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Apply { what, source }
    }

    /// The error and its sources, `: `-joined, cut to what an Event note holds.
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            let m = e.to_string();
            if !s.contains(&m) {
                s.push_str(": ");
                s.push_str(&m);
            }
            src = e.source();
        }
        truncate(&s, 1000)
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Whether a kube error is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_distinct_pascal_case() {
        let names: std::collections::BTreeSet<_> =
            Category::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Category::ALL.len());
        for n in names {
            assert!(n.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
            assert!(n.chars().all(|c| c.is_ascii_alphanumeric()), "{n}");
        }
    }

    #[test]
    fn only_io_errors_are_transient() {
        assert!(Category::ApplyFailed.is_transient());
        assert!(Category::ArtifactUnavailable.is_transient());
        assert!(!Category::InvalidSpec.is_transient());
        assert!(!Category::VerificationFailed.is_transient());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1000);
        assert!(t.len() <= 1000);
        assert!(t.ends_with("..."));
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn error_maps_to_its_category() {
        assert_eq!(
            Error::InvalidSpec("x".into()).category(),
            Category::InvalidSpec
        );
        assert_eq!(
            Error::Artifact {
                uri: "pvc://a/b".into(),
                message: "missing".into()
            }
            .category(),
            Category::ArtifactUnavailable
        );
    }
}
