//! Server-side apply under the field manager `tailor-operator`, for children and for status.
//!
//! Status is applied whole each time (the reconcilers compute all of it), so fields the
//! operator stops setting are removed rather than left stale.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

pub const FIELD_MANAGER: &str = "tailor-operator";

pub fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies a child object (which must carry its name).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = obj.name_any();
    let what = format!("{} {name}", K::kind(&()));
    api.patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map_err(Error::apply(what))
}

/// Applies the whole status of `name`; returns the resourceVersion the object has after it.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    status: &S,
) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &params(), &Patch::Apply(&body))
        .await
        .map(|o| o.resource_version())
        .map_err(Error::apply(format!("{} {name} status", K::kind(&()))))
}
