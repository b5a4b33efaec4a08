//! tailor's artifact layer (no libtorch, no Kubernetes types): one way for the operator, the
//! trainer, the server and the `tailor-fetch` init container to read and write models, data,
//! checkpoints and adapters wherever they live.
//!
//! - [`ArtifactUri`]: `pvc://`, `file://`, `s3://`, `gs://`, `az://`/`abfs[s]://`,
//!   `http[s]://` and `hf://` URIs, parsed strictly.
//! - [`Env`] and [`Context`]: credentials from each ecosystem's standard variables, given as a
//!   map (a Secret's keys), never printed ([`Secret`], [`Redactor`]).
//! - [`Store`]: head, list, ranged read, put (multipart for large files), delete, upload of a
//!   directory — through `object_store`.
//! - [`Hub`]: the Hugging Face Hub's HTTP file API (`HF_ENDPOINT`, `HF_TOKEN`).
//! - [`Fetcher`]: parallel ranged, resumable, verified downloads into a directory, with a
//!   node-local cache and progress lines.
//! - [`adapter`]: verify an adapter where it is stored; turn an adapter URI into a local
//!   verified directory.
//! - [`Error`]: the URI, a fixed [`ErrorKind`] (retry or fail), a redacted message.

pub mod adapter;
pub mod credentials;
pub mod error;
pub mod fetch;
pub mod hub;
pub mod progress;
pub mod store;
pub mod uri;

pub use credentials::{Env, Redactor, Secret};
pub use error::{Error, ErrorKind, Result};
pub use fetch::{Fetched, FetchedFile, Fetcher};
pub use hub::Hub;
pub use store::{Context, ObjectInfo, Store, Uploaded};
pub use uri::{ArtifactUri, RepoType, UriError};
