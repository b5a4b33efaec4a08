//! The Kubernetes side of a multi-node run (see [`super::build::group`] for what is built):
//! its rendezvous Service and NetworkPolicy, and restarting a failed group as fresh pods.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::DeleteParams;
use tailor_api::FineTuneJob;

use super::build;
use crate::apply;
use crate::context::Context;
use crate::error::{Error, is_not_found};

/// The headless Service and NetworkPolicy of a multi-node run (see [`build::group`]), applied
/// before its Job.
pub(super) async fn apply(
    ctx: &super::Ctx,
    ftj: &FineTuneJob,
    v: &build::Validated,
    ns: &str,
) -> Result<(), Error> {
    if let Some(svc) = build::group::rendezvous_service(ftj, v) {
        apply::apply(&Api::<Service>::namespaced(ctx.client.clone(), ns), &svc).await?;
    }
    if ctx.config.network_policies
        && let Some(np) = build::group::network_policy(ftj, v, &ctx.config)
    {
        apply::apply(
            &Api::<NetworkPolicy>::namespaced(ctx.client.clone(), ns),
            &np,
        )
        .await?;
    }
    Ok(())
}

/// Deletes what [`apply`] made for the train Job `job` (if anything): best effort, as
/// the FineTuneJob owns them and their deletion follows its own.
pub(super) async fn delete(ctx: &Context, ns: &str, job: &str) {
    let dp = DeleteParams::default();
    let svc = build::group::service_name(job);
    let gone = |r: Result<_, kube::Error>, what: &str| match r {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            tracing::warn!(namespace = %ns, %what, error = %e, "deleting a cancelled group's rendezvous object")
        }
    };
    gone(
        Api::<Service>::namespaced(ctx.client.clone(), ns)
            .delete(&svc, &dp)
            .await
            .map(drop),
        &format!("Service {svc}"),
    );
    gone(
        Api::<NetworkPolicy>::namespaced(ctx.client.clone(), ns)
            .delete(job, &dp)
            .await
            .map(drop),
        &format!("NetworkPolicy {job}"),
    );
}

/// Deletes a failed group's train Job in the foreground: it stays (being deleted) until its
/// pods are gone, and the next attempt's Job of the same name is created after, so no pod of
/// the old attempt still answers to a rank's hostname. Its ConfigMap stays for the next.
pub(super) async fn restart_group(ctx: &Context, ns: &str, job: &str) -> Result<(), Error> {
    let jobs_api = Api::<Job>::namespaced(ctx.client.clone(), ns);
    match jobs_api.delete(job, &DeleteParams::foreground()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(format!(
            "deleting Job {job} to restart its group"
        ))(e)),
    }
}
