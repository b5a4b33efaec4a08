//! The one error type at the `tailor-model` boundary.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model, tokenizer, template or adapter.
/// Messages name the file or field and what was expected, so the trainer and the server can
/// show them to a user as they are.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}", tailor_wire::families::FamilyError::UnknownArchitecture { found: found.clone() })]
    UnsupportedArchitecture { found: String },
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    #[error("no checkpoint in {dir}: expected model.safetensors or model.safetensors.index.json")]
    MissingCheckpoint { dir: PathBuf },
    #[error("{path}: corrupt safetensors file: {reason}")]
    CorruptCheckpoint { path: PathBuf, reason: String },
    #[error("checkpoint is missing tensor {name}")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("tensor {name} has unsupported dtype {dtype}")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("adapter: {0}")]
    Adapter(String),
    #[error(
        "adapter tensor {name} has shape {found:?} but the base model needs {expected:?}: the adapter was trained for a different base model"
    )]
    AdapterShapeMismatch {
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error(
        "unknown LoRA target module {0:?}: valid are q_proj, k_proj, v_proj, o_proj, qkv_proj, gate_proj, up_proj, gate_up_proj, down_proj (or \"all-linear\")"
    )]
    UnknownTargetModule(String),
    #[error(transparent)]
    TargetNotInModel(#[from] tailor_wire::families::FamilyError),
    #[error("invalid forward input: {0}")]
    InvalidInput(String),
    #[error("device: {0}")]
    Device(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}
