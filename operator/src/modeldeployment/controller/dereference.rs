//! The dereference step of a ModelDeployment's pipeline: the LoraAdapters its spec names,
//! resolved from the cache (waited for until Ready), and the Hub commit its base model is
//! pinned to.

use super::*;

/// The LoraAdapters the spec names, resolved from the cache. A missing or unverified adapter is
/// waited for (transient: its FineTuneJob may still be writing it).
pub(super) fn resolve_adapters(
    md: &ModelDeployment,
    r: &Ctx,
    ns: &str,
) -> Result<Vec<ResolvedAdapter>, Error> {
    let mut out = vec![];
    for a in &md.spec.adapters {
        let name = &a.adapter_ref.name;
        let waiting = |message: String| Error::Artifact {
            uri: format!("LoraAdapter {name}"),
            message,
        };
        let cached = cache::get(&r.adapters, ns, name);
        let la = match cached.as_deref().map(|g| &g.0) {
            None => {
                return Err(waiting(format!(
                    "adapter {:?} refers to LoraAdapter {name}, which does not exist (yet)",
                    a.name
                )));
            }
            Some(Err(bad)) => {
                return Err(waiting(format!(
                    "LoraAdapter {name} could not be read: {}",
                    bad.error
                )));
            }
            Some(Ok(la)) => la,
        };
        let st = la.status.clone().unwrap_or_default();
        if st.phase != LoraAdapterPhase::Ready {
            return Err(Error::Artifact {
                uri: la.spec.uri.clone(),
                message: format!("LoraAdapter {name} is {:?}, not Ready", st.phase),
            });
        }
        let lineage = st.lineage.unwrap_or_default();
        out.push(ResolvedAdapter {
            served_name: a.name.clone(),
            adapter: name.clone(),
            uri: la.spec.uri.clone(),
            sha256: la.spec.sha256.clone(),
            rank: Some(la.spec.rank),
            credentials: la
                .spec
                .credentials_secret_ref
                .as_ref()
                .map(|r| r.name.clone()),
            validation_loss: lineage.validation_loss,
            base_validation_loss: lineage.base_validation_loss,
            evaluation: lineage.evaluation,
        });
    }
    // The servers get one set of store credentials: adapters fetched with different Secrets
    // cannot share them.
    let secrets: std::collections::BTreeSet<&str> = out
        .iter()
        .filter_map(|a| a.credentials.as_deref())
        .collect();
    if secrets.len() > 1 {
        return Err(Error::InvalidSpec(format!(
            "the adapters name different credentialsSecretRefs ({}): the servers of one ModelDeployment fetch adapters with one Secret",
            secrets.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(out)
}

/// The Hub commit the revision `rev` fetches an `hf://` base model without one at: the one a
/// snapshot of its pod revision recorded (its own, or the stable or canary revision's when they
/// run on the same pods: an adapter canary never changes the base model under them), else the
/// one the branch names now (the snapshot written next keeps it). `None` for every other base
/// model.
pub(super) async fn base_model_pin(
    md: &ModelDeployment,
    r: &Ctx,
    ns: &str,
    rev: &str,
) -> Result<Option<String>, Error> {
    let base = &md.spec.base_model;
    if !inputs::is_unpinned_hub_uri(&base.uri) {
        return Ok(None);
    }
    let status = md.status.clone().unwrap_or_default();
    let same_pods = [
        Some(rev.to_string()),
        status.stable_revision,
        status.canary_revision,
    ]
    .into_iter()
    .flatten()
    .filter(|r| revision::pod_part(r) == revision::pod_part(rev));
    for other in same_pods {
        let recorded = r
            .config_map(ns, &build::snapshot_name(&md.name_any(), &other))
            .as_deref()
            .and_then(build::read_snapshot)
            .and_then(|s| s.pods.base_model_revision)
            .filter(|sha| tailor_artifacts::hub::is_commit_sha(sha));
        if recorded.is_some() {
            return Ok(recorded);
        }
    }
    let pinned = inputs::pinned_uri(
        &r.base,
        ns,
        "spec.baseModel",
        &base.uri,
        base.credentials_secret_ref.as_ref(),
    )
    .await?;
    Ok(inputs::revision_of(&pinned))
}
