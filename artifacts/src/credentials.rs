//! Credentials: only each ecosystem's standard variables (and the files they name), taken from a
//! given environment map, so the operator can fill it from a Secret's keys (`envFrom`) and tests
//! from a literal map.
//!
//! | Scheme          | Variables                                                                  |
//! |-----------------|----------------------------------------------------------------------------|
//! | `s3://`         | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,          |
//! |                 | `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`,     |
//! |                 | `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (IRSA), … (every `AWS_*` key |
//! |                 | object_store knows)                                                         |
//! | `gs://`         | `GOOGLE_APPLICATION_CREDENTIALS` (a file), `GOOGLE_SERVICE_ACCOUNT_KEY`     |
//! | `az://`         | `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,                  |
//! |                 | `AZURE_STORAGE_SAS_TOKEN`, `AZURE_CLIENT_ID`/`_SECRET`/`AZURE_TENANT_ID`, … |
//! | `hf://`         | `HF_TOKEN` (or the file `HF_TOKEN_PATH`, or `$HF_HOME/token`), `HF_ENDPOINT` |
//!
//! A value is secret unless its key is on a short list of settings that are not (endpoints,
//! regions, flags, file paths). Secret values are held in [`Secret`], whose `Debug` and
//! `Display` print `[redacted]`, and every error message passes through [`Redactor`], which
//! replaces any secret value (and its percent-encoded form) that a library put into a message.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A credential value. Printing it in any form shows `[redacted]`; [`Secret::expose`] is the
/// only way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Prefixes of the variables this layer reads; nothing else is taken from a process environment.
const PREFIXES: &[&str] = &["AWS_", "GOOGLE_", "AZURE_", "HF_", "HUGGING_FACE_HUB_TOKEN"];

/// Settings that are not secret: shown in `Debug`, never redacted from messages.
const PUBLIC_KEYS: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_S3_EXPRESS",
    "AWS_CHECKSUM_ALGORITHM",
    "AWS_UNSIGNED_PAYLOAD",
    "AWS_SKIP_SIGNATURE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_PROFILE",
    "AWS_METADATA_ENDPOINT",
    "AWS_IMDSV1_FALLBACK",
    "AWS_REQUEST_PAYER",
    "AWS_SERVER_SIDE_ENCRYPTION",
    "AWS_SSE_KMS_KEY_ID",
    "AWS_SSE_BUCKET_KEY_ENABLED",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_BASE_URL",
    "GOOGLE_SKIP_SIGNATURE",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_USE_EMULATOR",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_ALLOW_HTTP",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_SKIP_SIGNATURE",
    "AZURE_USE_FABRIC_ENDPOINT",
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_TOKEN_PATH",
    "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT",
];

pub fn is_public_key(key: &str) -> bool {
    PUBLIC_KEYS.contains(&key)
}

/// The credential environment of one store access: standard variable names to values.
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, Secret>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.vars {
            if is_public_key(k) {
                m.entry(k, &v.expose());
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl Env {
    /// An environment from explicit pairs (a Secret's data, a test's literal map). Every key is
    /// kept, so a caller may pass exactly what a Secret holds.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), Secret::new(v)))
            .collect();
        Self { vars }
    }

    /// The standard credential variables of this process (`AWS_*`, `GOOGLE_*`, `AZURE_*`,
    /// `HF_*`); nothing else is read.
    pub fn from_process() -> Self {
        Self::from_pairs(
            std::env::vars().filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p))),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(Secret::expose)
            .filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), Secret::new(value));
    }

    /// Pairs whose key starts with `prefix` (for handing to object_store's config keys).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.expose()))
    }

    /// The Hub token: `HF_TOKEN`, the legacy `HUGGING_FACE_HUB_TOKEN`, else the file
    /// `HF_TOKEN_PATH` or `$HF_HOME/token` (what `huggingface-cli login` writes).
    pub fn hf_token(&self) -> Option<Secret> {
        if let Some(t) = self
            .get("HF_TOKEN")
            .or_else(|| self.get("HUGGING_FACE_HUB_TOKEN"))
        {
            return Some(Secret::new(t.trim()));
        }
        let file = self
            .get("HF_TOKEN_PATH")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                self.get("HF_HOME")
                    .map(|h| std::path::Path::new(h).join("token"))
            })?;
        let t = std::fs::read_to_string(file).ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| Secret::new(t))
    }

    /// A redactor for every secret value of this environment (and the Hub token file's).
    pub fn redactor(&self) -> Redactor {
        let mut values: Vec<String> = self
            .vars
            .iter()
            .filter(|(k, _)| !is_public_key(k))
            .map(|(_, v)| v.expose().to_string())
            .collect();
        if let Some(t) = self.hf_token() {
            values.push(t.expose().to_string());
        }
        Redactor::new(values)
    }
}

/// Replaces secret values in text. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Arc<Vec<String>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.needles.len())
    }
}

pub const REDACTED: &str = "[redacted]";

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut needles = Vec::new();
        for v in values {
            let v = v.trim().to_string();
            if v.is_empty() {
                continue;
            }
            let encoded =
                percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            // A SAS token is a query string: its parts may show up on their own in a URL.
            if v.contains('&') && v.contains('=') {
                for part in v.split('&') {
                    if let Some((_, value)) = part.split_once('=')
                        && value.len() >= 8
                    {
                        needles.push(value.to_string());
                    }
                }
            }
            if encoded != v {
                needles.push(encoded);
            }
            needles.push(v);
        }
        // Longest first, so a value that contains another is replaced whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self {
            needles: Arc::new(needles),
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in self.needles.iter() {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let env = Env::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("HF_TOKEN", "hf_abcdefghijklmnop"),
        ]);
        let debug = format!("{env:?}");
        for secret in [
            "AKIAEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
            "hf_abcdefghijklmnop",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
        // Endpoints are not secret and help when reading logs.
        assert!(debug.contains("http://127.0.0.1:9000"), "{debug}");
        assert_eq!(format!("{}", Secret::new("x")), "[redacted]");
        assert_eq!(format!("{:?}", Secret::new("x")), "[redacted]");
    }

    #[test]
    fn redactor_removes_raw_and_encoded_values() {
        let env = Env::from_pairs([
            ("AWS_SECRET_ACCESS_KEY", "wJalr/K7+bPx"),
            (
                "AZURE_STORAGE_SAS_TOKEN",
                "sv=2022-11-02&sig=AbCdEfGhIjKlMn%3D",
            ),
            ("AWS_REGION", "us-east-1"),
        ]);
        let r = env.redactor();
        let msg = "GET http://h/b?sig=AbCdEfGhIjKlMn%3D failed: key wJalr%2FK7%2BbPx or wJalr/K7+bPx in us-east-1";
        let out = r.redact(msg);
        assert!(!out.contains("AbCdEfGhIjKlMn"), "{out}");
        assert!(!out.contains("wJalr"), "{out}");
        assert!(out.contains("us-east-1"), "{out}");
    }

    #[test]
    fn hub_token_from_variable_or_file() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("token"), "hf_fromfile\n").expect("write");
        let env = Env::from_pairs([("HF_HOME", dir.path().to_str().expect("utf8"))]);
        assert_eq!(
            env.hf_token().map(|t| t.expose().to_string()),
            Some("hf_fromfile".into())
        );
        assert!(
            env.redactor()
                .redact("token hf_fromfile")
                .contains(REDACTED)
        );
        let env = Env::from_pairs([("HF_TOKEN", "hf_var")]);
        assert_eq!(
            env.hf_token().map(|t| t.expose().to_string()),
            Some("hf_var".into())
        );
        assert!(Env::default().hf_token().is_none());
    }
}
