//! Safetensors reading (single file or sharded index) and writing.
//!
//! Tensors are addressed by their Hugging Face names. Headers are validated through a read-only
//! mapping; tensor data is read one tensor at a time with positioned reads (not through the
//! mapping, whose touched pages would count in the process's resident memory until unmapped)
//! and converted straight to the kind and device the model wants. So loading a bf16 or fp16
//! checkpoint holds the model once plus one tensor in flight: never an fp32 copy of the whole
//! model, never the file's pages a second time.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, View};
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result, read_json};

struct Shard {
    path: PathBuf,
    file: std::fs::File,
    header_len: usize,
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

/// An open set of safetensors files.
pub struct SafetensorsFiles {
    shards: Vec<Shard>,
    by_name: HashMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn kind_of(name: &str, dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: "<output>".into(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the mapping is read-only and checkpoints are not modified while a model loads;
        // a concurrent truncation would at worst fault this process, as with any mmap reader.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let corrupt = |e: safetensors::SafeTensorError| ModelError::CorruptCheckpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // Full validation (header, offsets, buffer length) once, then keep only the metadata;
        // the mapping goes when this returns.
        SafeTensors::deserialize(&map).map_err(corrupt)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(corrupt)?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            header_len,
            tensors,
        })
    }
}

impl SafetensorsFiles {
    /// Opens `DIR/model.safetensors`, or every shard named by `DIR/model.safetensors.index.json`.
    pub fn open_model_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index.exists() {
            let idx: ShardIndex = read_json(&index)?;
            let mut files: Vec<String> = idx.weight_map.values().cloned().collect();
            files.sort();
            files.dedup();
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            for p in &paths {
                if !p.exists() {
                    return Err(ModelError::CorruptCheckpoint {
                        path: index.clone(),
                        reason: format!("shard {} listed in the index does not exist", p.display()),
                    });
                }
            }
            Self::open_files(&paths)
        } else if single.exists() {
            Self::open_files(&[single])
        } else {
            Err(ModelError::MissingCheckpoint {
                dir: dir.to_path_buf(),
            })
        }
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut by_name = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let shard = Shard::open(p)?;
            for name in shard.tensors.keys() {
                by_name.insert(name.clone(), i);
            }
            shards.push(shard);
        }
        Ok(Self { shards, by_name })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        let shard = &self.shards[*self.by_name.get(name)?];
        let info = shard.tensors.get(name)?;
        Some(info.shape.iter().map(|&d| d as i64).collect())
    }

    /// Copies tensor `name` out of the mapping as `kind` on `device`.
    pub fn tensor(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        let idx = *self
            .by_name
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })?;
        let shard = &self.shards[idx];
        let info = shard
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })?;
        let src_kind = kind_of(name, info.dtype)?;
        let start = 8 + shard.header_len + info.data_offsets.0;
        let mut bytes = vec![0u8; info.data_offsets.1 - info.data_offsets.0];
        std::os::unix::fs::FileExt::read_exact_at(&shard.file, &mut bytes, start as u64).map_err(
            |e| ModelError::CorruptCheckpoint {
                path: shard.path.clone(),
                reason: format!("reading tensor {name}: {e}"),
            },
        )?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(&bytes, &shape, src_kind)?;
        drop(bytes);
        Ok(t.f_to_device(device)?.f_to_kind(kind)?)
    }

    /// Like [`Self::tensor`] but checks the shape.
    pub fn tensor_with_shape(
        &self,
        name: &str,
        expected: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        if let Some(found) = self.shape(name)
            && found != expected
        {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                found,
                expected: expected.to_vec(),
            });
        }
        self.tensor(name, kind, device)
    }
}

struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes named tensors (any device) to a safetensors file with `{"format": "pt"}` metadata,
/// as `transformers`, PEFT and `safetensors.torch` write them. The file appears atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut host = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.f_to_device(Device::Cpu)?.f_contiguous()?.detach();
        let dtype = dtype_of(t.kind())?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        host.push((
            name.clone(),
            HostTensor {
                dtype,
                shape: t.size().iter().map(|&d| d as usize).collect(),
                data,
            },
        ));
    }
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::CorruptCheckpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a whole safetensors file (used for small files: adapters, optimizer state).
pub fn read_safetensors(path: &Path, device: Device) -> Result<Vec<(String, Tensor)>> {
    let files = SafetensorsFiles::open_files(&[path.to_path_buf()])?;
    let mut names: Vec<String> = files.names().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let shard = &files.shards[0];
            let kind = kind_of(&n, shard.tensors[&n].dtype)?;
            let t = files.tensor(&n, kind, device)?;
            Ok((n, t))
        })
        .collect()
}
