//! The controllers this binary runs. A new kind is one module plus one line here.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::context::Context;

/// Runs a controller until shutdown.
pub type RunFn = fn(Arc<Context>) -> BoxFuture<'static, ()>;

/// Every controller, by name.
pub const ALL: &[(&str, RunFn)] = &[
    (crate::dataset::NAME, |ctx| {
        Box::pin(crate::dataset::run(ctx))
    }),
    (crate::finetune::NAME, |ctx| {
        Box::pin(crate::finetune::run(ctx))
    }),
    (crate::lora::NAME, |ctx| Box::pin(crate::lora::run(ctx))),
    (crate::modeldeployment::NAME, |ctx| {
        Box::pin(crate::modeldeployment::run(ctx))
    }),
];
