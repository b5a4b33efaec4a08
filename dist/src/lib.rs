//! Data-parallel training for tailor on torch.distributed's c10d.
//!
//! - [`World`]: torchrun's launch contract (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`,
//!   `MASTER_PORT`), so the trainer runs as a rank under torchrun-style launchers, and the
//!   launcher side ([`Launch`]: `--nnodes`, `--nproc-per-node`, `--node-rank`) that starts one
//!   rank process per GPU of a pod.
//! - [`ProcessGroup`]: the rendezvous over libtorch's `TCPStore` (hosted by rank 0) and the
//!   collectives, on c10d's Gloo backend, through a small C++ bridge (`csrc/dist.cpp`).
//! - Buckets ([`flat_views`], [`bucket_grads`]): parameters, gradients and optimizer state in
//!   one flat tensor each, so a step's clip, update, zeroing and all-reduce are a few large ops.
//! - [`ops`]: the op counter of the trainer's profile (`csrc/ops.cpp`), the other piece of
//!   libtorch's C++ API tch does not bind.

mod bucket;
mod group;
mod launch;
pub mod ops;
mod world;

pub use bucket::{bucket_grads, flat_views, views_of};
pub use group::{DistError, ProcessGroup};
pub use launch::{Launch, LaunchError, supervise};
pub use world::{World, WorldError};
