//! tailor-router: an OpenAI-aware reverse proxy in front of tailor's serving pods.
//!
//! A request for a served name goes to one of the route's weighted targets, sticky per user
//! (`user` field or `X-User-Id`), with `model` rewritten to the target's adapter name. Module
//! map: [`config`] (file format, validation), [`split`] (target choice, pure), [`auth`] (keys,
//! token buckets), [`proxy`] (forwarding, retry, streaming), [`stats`] and [`metrics`] (what
//! canary analysis reads), [`state`] (snapshot swapped on reload), [`app`] (routes, `/stats`),
//! [`error`] (OpenAI error bodies), [`tokens`] (backend and admin tokens from files), [`serve`]
//! (HTTP/1.1 with header, idle and write deadlines and a connection cap).

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod serve;
pub mod split;
pub mod state;
pub mod stats;
pub mod tokens;
