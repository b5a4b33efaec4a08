//! Secrets the operator reads by name, for a field of a spec (it has no list or watch on
//! Secrets, so a Secret is read when a reconcile needs it). A Secret that does not exist yet,
//! or lacks the key, is waited for with back-off. Values never reach a log line, an Event, a
//! status or an error message: errors name the field, the Secret and the key only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::context::Context;
use crate::error::Error;

/// Every key of Secret `name` in `ns`, named by the spec field `field`.
pub async fn data(
    ctx: &Context,
    ns: &str,
    field: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Secret {name}")))?
        .ok_or_else(|| {
            Error::SecretNotFound(format!(
                "{field}: Secret {name:?} not found in {ns}; waiting for it"
            ))
        })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// One key of Secret `name` in `ns`.
pub async fn key(
    ctx: &Context,
    ns: &str,
    field: &str,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, Error> {
    data(ctx, ns, field, name)
        .await?
        .remove(key)
        .ok_or_else(|| {
            Error::SecretNotFound(format!(
                "{field}: Secret {name:?} has no key {key:?}; waiting for it"
            ))
        })
}
