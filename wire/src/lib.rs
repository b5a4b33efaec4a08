//! tailor-wire: the typed contracts between tailor's parts, one definition used by the writer
//! and the reader of each (the operator and the trainer, server and router it configures and
//! reads). No libtorch and no Kubernetes types: every part can depend on it.
//!
//! Each module is one boundary. Every type has a round-trip test, so a field renamed on one side
//! fails here, not in an end-to-end run.

pub mod eval;
pub mod families;
pub mod prepare;
pub mod router;
pub mod server;
pub mod train;
