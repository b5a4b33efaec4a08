//! tailor-sim: a local stand-in for a Kubernetes cluster, for tests and the local demo. It
//! serves the Kubernetes API over HTTPS (real `kubectl` and kube-rs work against it), keeps
//! objects in a persistent store, runs the built-in controllers the operator depends on, and
//! runs pods as local processes of the binaries their images map to.

pub mod admission;
pub mod apply;
pub mod auth;
pub mod bench;
pub mod cluster;
pub mod controllers;
pub mod discovery;
pub mod events;
pub mod kubeconfig;
pub mod kubelet;
pub mod logs;
pub mod openapi;
pub mod patch;
pub mod proto;
pub mod rbac;
pub mod resources;
pub mod scheduler;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod subresources;
pub mod table;
pub mod tls;
pub mod up;
pub mod watch;
