//! Remote inputs the operator looks at before a pod fetches them: the credentials Secret exists,
//! and a Hub revision is resolved to its commit once, so that every attempt of a run fetches
//! the same bytes.

use tailor_api::{LocalRef, ModelRef};
use tailor_artifacts::hub::is_commit_sha;
use tailor_artifacts::{ArtifactUri, Env, Hub};

use crate::config::OperatorConfig;
use crate::context::Context;
use crate::error::Error;
use crate::secrets;

/// The URI a pod fetches for `model`: an `hf://` reference to a branch or tag (or none, which
/// is `main`) pinned to the commit it names now; any other URI as written. `field` names the
/// spec field for errors. A credentials Secret that does not exist (yet) is an error here,
/// before a pod waits on it.
pub async fn pinned(
    ctx: &Context,
    ns: &str,
    field: &str,
    model: &ModelRef,
) -> Result<String, Error> {
    pinned_uri(
        ctx,
        ns,
        field,
        &model.uri,
        model.credentials_secret_ref.as_ref(),
    )
    .await
}

/// [`pinned`] for a URI and the Secret beside it (a ModelDeployment's base model).
pub async fn pinned_uri(
    ctx: &Context,
    ns: &str,
    field: &str,
    uri: &str,
    credentials_secret: Option<&LocalRef>,
) -> Result<String, Error> {
    let env = credentials(
        ctx,
        ns,
        &format!("{field}.credentialsSecretRef"),
        credentials_secret,
    )
    .await?;
    let Some(hub_uri) = needs_pin(uri) else {
        return Ok(uri.to_string());
    };
    hub_allowed(&ctx.config.hub_endpoint_allow_list, &env)
        .and_then(|()| endpoints_allowed(&ctx.config, &env))
        .map_err(|e| Error::InvalidSpec(format!("{field}.uri {uri}: {e}")))?;
    let artifact = |e: tailor_artifacts::Error| Error::Artifact {
        uri: uri.to_string(),
        message: format!("resolving the revision: {e}"),
    };
    let hub = Hub::new(&env).map_err(artifact)?;
    let rev = tokio::time::timeout(RESOLVE_TIMEOUT, hub.revision(&hub_uri))
        .await
        .map_err(|_| Error::Artifact {
            uri: uri.to_string(),
            message: format!(
                "resolving the revision: no answer in {}s",
                RESOLVE_TIMEOUT.as_secs()
            ),
        })?
        .map_err(artifact)?;
    Ok(pin(hub_uri, rev.sha))
}

/// How long a reconcile waits for the Hub to resolve a revision.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Whether the operator may ask the Hub endpoint the credentials name (`HF_ENDPOINT`, else the
/// Hub): a tenant's Secret must not make the operator send requests where it likes.
fn hub_allowed(allowed: &[String], env: &Env) -> Result<(), String> {
    let endpoint = env
        .get("HF_ENDPOINT")
        .unwrap_or(tailor_artifacts::hub::DEFAULT_ENDPOINT)
        .trim_end_matches('/');
    if allowed.iter().any(|a| a.trim_end_matches('/') == endpoint) {
        return Ok(());
    }
    Err(format!(
        "the operator resolves Hub revisions only at the endpoints the cluster admin lists in its config (hubEndpointAllowList: {allowed:?}), not at HF_ENDPOINT {endpoint:?}; write the commit in the URI (hf://<org>/<name>@<sha>) to fetch it without the operator"
    ))
}

/// The store variables of the Secret `secret` names (none without one); `field` names the spec
/// field for errors (`SecretNotFound`, transient: the Secret may be created later).
pub async fn credentials(
    ctx: &Context,
    ns: &str,
    field: &str,
    secret: Option<&LocalRef>,
) -> Result<Env, Error> {
    let Some(r) = secret else {
        return Ok(Env::default());
    };
    Ok(Env::from_pairs(
        secrets::data(ctx, ns, field, &r.name)
            .await?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())),
    ))
}

/// Variables that name a file to read: in a pod they point into the pod, in the operator they
/// would point into the operator (its own service-account token, say), so the operator uses
/// none of them.
fn names_a_file(key: &str) -> bool {
    key.ends_with("_FILE")
        || key.ends_with("_PATH")
        || matches!(
            key,
            "HF_HOME" | "GOOGLE_APPLICATION_CREDENTIALS" | "GOOGLE_SERVICE_ACCOUNT"
        )
}

/// Whether the operator may use a tenant's store credentials itself: no variable names a file
/// (see [`names_a_file`]), and every variable that points a client somewhere (`*ENDPOINT*`,
/// `*_URL`, `*_URI`, `*EMULATOR*`, `*_HOST`) names an endpoint the admin listed (`HF_ENDPOINT`
/// in `hubEndpointAllowList`, the others in `storeEndpointAllowList`). The message names the
/// variable and, for an endpoint, its value (an address, not a secret).
pub fn endpoints_allowed(cfg: &OperatorConfig, env: &Env) -> Result<(), String> {
    allowed_endpoints(
        &cfg.hub_endpoint_allow_list,
        &cfg.store_endpoint_allow_list,
        env,
    )
}

fn allowed_endpoints(hub: &[String], store: &[String], env: &Env) -> Result<(), String> {
    for (key, value) in env.with_prefix("") {
        let k = key.to_ascii_uppercase();
        if names_a_file(&k) {
            return Err(format!(
                "the operator reads no file a Secret names ({key}): put the credential itself in the Secret (e.g. HF_TOKEN, AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT_KEY)"
            ));
        }
        let points = k.contains("ENDPOINT")
            || k.contains("EMULATOR")
            || k.ends_with("_URL")
            || k.ends_with("_URI")
            || k.ends_with("_HOST");
        if !points {
            continue;
        }
        let (list, name) = if k == "HF_ENDPOINT" {
            (hub, "hubEndpointAllowList")
        } else {
            (store, "storeEndpointAllowList")
        };
        let v = value.trim_end_matches('/');
        if !list.iter().any(|a| a.trim_end_matches('/') == v) {
            return Err(format!(
                "the operator reads stores only at the endpoints the cluster admin lists in its config ({name}: {list:?}), not at {key}={v:?}"
            ));
        }
    }
    Ok(())
}

/// Whether `uri` is an `hf://` reference the operator pins (its revision is not a commit sha).
pub fn is_unpinned_hub_uri(uri: &str) -> bool {
    needs_pin(uri).is_some()
}

/// The `hf://` URI of `uri` when its revision is not a commit sha.
fn needs_pin(uri: &str) -> Option<ArtifactUri> {
    match ArtifactUri::parse(uri).ok()? {
        u @ ArtifactUri::Hf { .. } if !is_pinned(&u) => Some(u),
        _ => None,
    }
}

fn is_pinned(u: &ArtifactUri) -> bool {
    matches!(u, ArtifactUri::Hf { revision: Some(r), .. } if is_commit_sha(r))
}

fn pin(uri: ArtifactUri, sha: String) -> String {
    uri.with_revision(Some(sha)).to_string()
}

/// `uri` fetched at `revision` where it is an `hf://` URI (the commit a run's first Job was
/// pinned to, for the later steps of the same run); any other URI as written.
pub fn at_revision(uri: &str, revision: Option<&str>) -> String {
    match (ArtifactUri::parse(uri), revision) {
        (Ok(u @ ArtifactUri::Hf { .. }), Some(r)) => pin(u, r.to_string()),
        _ => uri.to_string(),
    }
}

/// The commit a pinned `hf://` URI names (what a Job's fetch was given).
pub fn revision_of(uri: &str) -> Option<String> {
    match ArtifactUri::parse(uri).ok()? {
        ArtifactUri::Hf {
            revision: Some(r), ..
        } if is_commit_sha(&r) => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_tenants_store_endpoints_must_be_the_ones_the_admin_lists() {
        let hub = ["https://huggingface.co".to_string()];
        let store = ["http://minio.storage.svc:9000".to_string()];
        let ok = |pairs: &[(&str, &str)]| {
            allowed_endpoints(&hub, &store, &Env::from_pairs(pairs.to_vec()))
        };
        assert!(ok(&[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")]).is_ok());
        assert!(ok(&[("AWS_ENDPOINT_URL", "http://minio.storage.svc:9000/")]).is_ok());
        assert!(
            ok(&[
                ("HF_TOKEN", "hf_x"),
                ("HF_ENDPOINT", "https://huggingface.co")
            ])
            .is_ok()
        );
        for (key, value) in [
            ("AWS_ENDPOINT_URL", "http://10.0.0.7:9000"),
            ("AWS_METADATA_ENDPOINT", "http://169.254.169.254"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://kubernetes.default.svc",
            ),
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("HF_ENDPOINT", "http://internal-hub"),
            // Files in the operator's own filesystem (its service-account token, /dev/zero).
            (
                "HF_TOKEN_PATH",
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
            ("HF_HOME", "/var/run/secrets/kubernetes.io/serviceaccount"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/zero"),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                "/etc/tailor/operator.json",
            ),
            ("AZURE_FEDERATED_TOKEN_FILE", "/proc/self/environ"),
        ] {
            let e = ok(&[(key, value), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")]).expect_err(key);
            assert!(e.contains(key) && !e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn the_operator_asks_only_the_hub_endpoints_the_admin_allows() {
        let allowed = vec!["https://huggingface.co".to_string()];
        assert!(hub_allowed(&allowed, &Env::default()).is_ok());
        let mirror = Env::from_pairs([("HF_ENDPOINT", "http://169.254.169.254/")]);
        let e = hub_allowed(&allowed, &mirror).expect_err("not listed");
        assert!(
            e.contains("hubEndpointAllowList") && e.contains("169.254.169.254"),
            "{e}"
        );
        let listed = vec!["http://169.254.169.254".to_string()];
        assert!(
            hub_allowed(&listed, &mirror).is_ok(),
            "trailing slashes aside"
        );
    }

    #[test]
    fn only_hub_references_to_branches_and_tags_are_pinned() {
        assert!(needs_pin("hf://org/m").is_some());
        assert!(needs_pin("hf://org/m@v1.0/sub").is_some());
        assert!(needs_pin(&format!("hf://org/m@{SHA}")).is_none());
        assert!(needs_pin("s3://bucket/models/base").is_none());
        assert!(needs_pin("pvc://tailor-artifacts/models/base").is_none());
        let u = needs_pin("hf://datasets/org/d@main/data").expect("hf");
        assert_eq!(
            pin(u, SHA.into()),
            format!("hf://datasets/org/d@{SHA}/data")
        );
        assert_eq!(
            revision_of(&format!("hf://org/m@{SHA}")).as_deref(),
            Some(SHA)
        );
        assert_eq!(revision_of("hf://org/m@main"), None);
        assert_eq!(revision_of("s3://bucket/k"), None);
    }
}
