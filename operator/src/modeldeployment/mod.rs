//! ModelDeployment: a base model and its adapters behind an OpenAI-compatible endpoint,
//! changed by canary rollouts that roll themselves back (DESIGN.md §2, §3, §5).
//!
//! Reconcile pipeline: **dereference** (LoraAdapters of the spec, the stable revision's
//! snapshot, serving pods and what adapters they hold, the router's `/stats`) → **validate**
//! (into a [`revision::RevisionSpec`]: what the desired revision serves) → **build** (pure:
//! [`rollout::decide`] for the next status and Events, [`build`] for the children of the stable
//! and canary revisions and the router config) → **apply** (server-side apply; hot-load and
//! unload adapters through each server's runtime LoRA API, tailor-server's and vLLM's alike)
//! → **update status**.
//!
//! The pure parts are here and unit-tested: revision hashing ([`revision`]), the analysis
//! verdict ([`analysis`]), the step state machine ([`rollout`]), the gate ([`gate`]), object
//! builders ([`build`], the serving container per engine in [`runtime`]), `/stats` ([`stats`])
//! and per-pod adapter state ([`pods`]).

pub mod analysis;
pub mod autoscale;
pub mod build;
pub mod clients;
pub mod controller;
pub mod gate;
pub mod metrics;
pub mod pods;
pub mod revision;
pub mod rollout;
pub mod runtime;
pub mod stats;

/// Controller name (metrics label, logs).
pub const NAME: &str = "modeldeployment";

pub use controller::run;
