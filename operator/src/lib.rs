//! tailor-operator: one kube-rs controller per tailor kind, leader election on a Lease,
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! Shared pieces live in their own modules (errors and their categories, the reconcile
//! context, server-side apply, Events, metrics, config, artifact URIs, batch Jobs); each kind's
//! controller is one module with a pure `build` submodule, listed in [`controllers::ALL`].

pub mod apply;
pub mod artifacts;
pub mod cache;
pub mod config;
pub mod context;
pub mod controller;
pub mod controllers;
pub mod dataset;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod finetune;
pub mod http;
pub mod inputs;
pub mod jobs;
pub mod leader;
pub mod lora;
pub mod metrics;
pub mod modeldeployment;
pub mod pods;
pub mod secrets;
pub mod stored;
