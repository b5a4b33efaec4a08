//! The volumes and mounts of a pod the operator builds ([`PodVolumes`]): its config, the
//! namespace's area of the artifact volume, shared prefixes and claims it reads, and one
//! `tailor-fetch` init container per remote input (with the admin's fetch cache).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvFromSource, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, SecretEnvSource, Volume, VolumeMount,
};

use super::CONFIG_DIR;
use crate::artifacts::{self, Resolved};
use crate::config::OperatorConfig;

/// Volumes and mounts of a pod the operator builds, and the init containers that fetch its
/// remote inputs.
#[derive(Debug, Default, Clone)]
pub struct PodVolumes {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    /// One `tailor-fetch` init container per remote input (see [`PodVolumes::input`]).
    pub fetches: Vec<Container>,
    /// The namespace's store Secret, when the pod's process reads or writes its area of the
    /// artifact store itself (see [`PodVolumes::own`]): the main container's environment.
    pub store_secret: Option<String>,
    /// The namespace, and whether its area of the artifact volume is writable here: the area is
    /// mounted only once something in it is used, so without `pvc://` URIs a pod needs no claim.
    ns: String,
    writable: bool,
}

/// Where fetch init containers see the operator config's `fetchCache`.
pub const FETCH_CACHE_DIR: &str = "/var/cache/tailor";

/// The emptyDir the fetch init containers fill and the main container reads.
const INPUTS_VOLUME: &str = "inputs";

impl PodVolumes {
    /// The pod's config ConfigMap at `/etc/tailor`. The namespace's area of the artifact volume
    /// (at `artifactsMount`, a `subPath`: the pod sees nothing of other namespaces; writable only
    /// where `writable`, for pods that write outputs) is mounted once something in it is used.
    pub fn new(ns: &str, config_map: &str, writable: bool) -> Self {
        let mut v = Self {
            ns: ns.to_string(),
            writable,
            ..Self::default()
        };
        v.volumes.push(Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        });
        v.mounts.push(VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        v
    }

    /// The namespace's area of the artifact claim at `artifactsMount`, once.
    fn mount_area(&mut self, cfg: &OperatorConfig) {
        if self.volumes.iter().any(|v| v.name == "artifacts") {
            return;
        }
        let read_only = (!self.writable).then_some(true);
        self.volumes.push(Volume {
            name: "artifacts".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cfg.artifacts_claim.clone(),
                read_only,
            }),
            ..Default::default()
        });
        self.mounts.push(VolumeMount {
            name: "artifacts".into(),
            mount_path: cfg.artifacts_mount.to_string_lossy().into_owned(),
            sub_path: Some(self.ns.clone()),
            read_only,
            ..Default::default()
        });
    }

    /// An artifact the operator's pods produce for the namespace (prepared data, a run's
    /// output): in its area of the artifact store, given to the pod's process as the URI
    /// itself (it reads and writes there with the namespace's store Secret), or on the
    /// artifact volume, mounted as [`PodVolumes::add`] does.
    pub fn own(
        &mut self,
        cfg: &OperatorConfig,
        uri: &str,
        is_dir: bool,
    ) -> Result<PathBuf, String> {
        match crate::stored::store_secret(cfg, &self.ns, uri) {
            Some(secret) => {
                self.store_secret = Some(secret.to_string());
                Ok(PathBuf::from(uri))
            }
            None => self.add(cfg, uri, is_dir),
        }
    }

    /// The main container's environment from the namespace's store Secret, if it needs it.
    pub fn store_env(&self) -> Option<Vec<EnvFromSource>> {
        self.store_secret.as_ref().map(|name| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: name.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        })
    }

    fn has_mount(&self, path: &str) -> bool {
        self.mounts.iter().any(|m| m.mount_path == path)
    }

    fn mount(&mut self, prefix: &str, volume: Volume, path: String, sub_path: Option<String>) {
        if self.has_mount(&path) {
            return;
        }
        let name = format!("{prefix}-{}", self.volumes.len());
        self.volumes.push(Volume {
            name: name.clone(),
            ..volume
        });
        self.mounts.push(VolumeMount {
            name,
            mount_path: path,
            sub_path,
            read_only: Some(true),
            ..Default::default()
        });
    }

    /// Makes a user's input visible in the pod and returns its path there: mounted like
    /// [`PodVolumes::add`], or, for `s3://`, `gs://`, `az://`, `https://` and `hf://`, fetched
    /// before the pod's containers start by an init container that gets the Secret
    /// `credentials` as its environment (the store's standard variables). A file lands in a
    /// directory of its own under [`artifacts::INPUTS_DIR`], under its own name.
    pub fn input(
        &mut self,
        cfg: &OperatorConfig,
        uri: &str,
        is_dir: bool,
        credentials: Option<&str>,
    ) -> Result<PathBuf, String> {
        if let Resolved::Remote(u) = artifacts::resolve(cfg, uri)? {
            return Ok(self.fetch(cfg, &u, is_dir, credentials));
        }
        if credentials.is_some() {
            return Err(format!(
                "{uri} is mounted, not fetched: credentialsSecretRef goes only with s3://, gs://, az://, https:// and hf:// URIs"
            ));
        }
        self.add(cfg, uri, is_dir)
    }

    fn fetch(
        &mut self,
        cfg: &OperatorConfig,
        uri: &str,
        is_dir: bool,
        credentials: Option<&str>,
    ) -> PathBuf {
        let n =
            match self.fetches.iter().position(|c| {
                c.args.as_ref().and_then(|a| a.first()).map(String::as_str) == Some(uri)
            }) {
                Some(n) => n,
                None => {
                    self.push_fetch(cfg, uri, credentials);
                    self.fetches.len() - 1
                }
            };
        let dir = PathBuf::from(format!("{}/{n}", artifacts::INPUTS_DIR));
        let name = tailor_artifacts::ArtifactUri::parse(uri)
            .ok()
            .and_then(|u| u.file_name());
        match name {
            Some(name) if !is_dir => dir.join(name),
            _ => dir,
        }
    }

    fn push_fetch(&mut self, cfg: &OperatorConfig, uri: &str, credentials: Option<&str>) {
        if self.fetches.is_empty() {
            self.volumes.push(Volume {
                name: INPUTS_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            self.mounts.push(VolumeMount {
                name: INPUTS_VOLUME.into(),
                mount_path: artifacts::INPUTS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        let n = self.fetches.len();
        let mut args = vec![
            uri.to_string(),
            format!("{}/{n}", artifacts::INPUTS_DIR),
            "--log-format".into(),
            "json".into(),
        ];
        let mut mounts = vec![VolumeMount {
            name: INPUTS_VOLUME.into(),
            mount_path: artifacts::INPUTS_DIR.into(),
            ..Default::default()
        }];
        // Checked when the config was loaded.
        if let Ok(Some(cache)) = cfg.fetch_cache_volume() {
            if !self.volumes.iter().any(|v| v.name == cache.name) {
                self.volumes.push(cache);
            }
            // The namespace's own directory of the cache: no pod reads another's fetches.
            mounts.push(VolumeMount {
                name: crate::config::FETCH_CACHE_VOLUME.into(),
                mount_path: FETCH_CACHE_DIR.into(),
                sub_path: Some(self.ns.clone()),
                ..Default::default()
            });
            args.extend(["--cache".into(), FETCH_CACHE_DIR.into()]);
        }
        self.fetches.push(Container {
            name: format!("fetch-{n}"),
            image: Some(cfg.fetch_image.clone()),
            args: Some(args),
            env_from: credentials.map(|name| {
                vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: name.to_string(),
                        optional: None,
                    }),
                    ..Default::default()
                }]
            }),
            volume_mounts: Some(mounts),
            // tailor-fetch's last line says what failed (`error: <uri>: <Kind>: <cause>`).
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        });
    }

    /// Makes what `uri` names visible in the pod, read-only unless it is in the namespace's own
    /// area, and returns its path there; `Err` says why the tenant may not use `uri` (see
    /// [`artifacts::resolve`]). `is_dir` says whether it names a directory (a file's parent is
    /// mounted).
    pub fn add(
        &mut self,
        cfg: &OperatorConfig,
        uri: &str,
        is_dir: bool,
    ) -> Result<PathBuf, String> {
        let r = artifacts::resolve(cfg, uri)?;
        let path = artifacts::pod_path(cfg, &r);
        match &r {
            Resolved::Area { .. } => self.mount_area(cfg),
            Resolved::Remote(u) => {
                return Err(format!(
                    "{u}: object stores and the Hub are read only for inputs (base models, dataset sources); this must be on the artifact volume (pvc://{}/...)",
                    cfg.artifacts_claim
                ));
            }
            Resolved::Shared { path: rel } => {
                // Each shared prefix is its own read-only subPath mount of the artifact claim.
                let prefix = cfg
                    .shared_prefixes
                    .iter()
                    .map(|p| p.trim_matches('/'))
                    .find(|p| rel == p || rel.starts_with(&format!("{p}/")))
                    .unwrap_or(rel)
                    .to_string();
                self.mount(
                    "shared",
                    Volume {
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: cfg.artifacts_claim.clone(),
                            read_only: Some(true),
                        }),
                        ..Default::default()
                    },
                    format!("{}/{prefix}", artifacts::SHARED_MOUNT),
                    Some(prefix),
                );
            }
            Resolved::Claim { claim, .. } => self.mount(
                "claim",
                Volume {
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.clone(),
                        read_only: Some(true),
                    }),
                    ..Default::default()
                },
                format!("/mnt/{claim}"),
                None,
            ),
            Resolved::Host(p) => {
                let dir = if is_dir {
                    p.clone()
                } else {
                    p.parent().map(PathBuf::from).unwrap_or_else(|| p.clone())
                };
                let mount = dir.to_string_lossy().into_owned();
                self.mount(
                    "host",
                    Volume {
                        host_path: Some(HostPathVolumeSource {
                            path: mount.clone(),
                            type_: Some("Directory".into()),
                        }),
                        ..Default::default()
                    },
                    mount,
                    None,
                );
            }
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_see_their_namespace_area_shared_prefixes_and_their_own_claims() {
        let mut cfg = OperatorConfig::for_tests();
        cfg.shared_prefixes = vec!["models".into()];
        let mut v = PodVolumes::new("team-a", "cm", false);
        // No claim until something on it is used.
        assert_eq!(v.volumes.len(), 1, "only the config");
        let p = v
            .add(&cfg, "pvc://tailor-artifacts/finetune/x", true)
            .expect("area");
        assert_eq!(p, PathBuf::from("/artifacts/finetune/x"));
        let area = &v.mounts[1];
        assert_eq!(area.mount_path, "/artifacts");
        assert_eq!(area.sub_path.as_deref(), Some("team-a"));
        assert_eq!(area.read_only, Some(true));
        let p = v
            .add(&cfg, "pvc://data/raw/x.jsonl", false)
            .expect("own claim");
        assert_eq!(p, PathBuf::from("/mnt/data/raw/x.jsonl"));
        v.add(&cfg, "pvc://data/other.jsonl", false)
            .expect("same claim");
        let p = v
            .add(&cfg, "pvc://tailor-artifacts/models/base", true)
            .expect("shared");
        assert_eq!(p, PathBuf::from("/artifacts-shared/models/base"));
        let shared = v.mounts.last().expect("mount");
        assert_eq!(shared.sub_path.as_deref(), Some("models"));
        assert_eq!(shared.read_only, Some(true));
        let p = v
            .add(&cfg, "pvc://tailor-artifacts/finetune/x", true)
            .expect("area");
        assert_eq!(p, PathBuf::from("/artifacts/finetune/x"));
        // config, artifacts area, the `data` claim, the shared prefix.
        assert_eq!(v.volumes.len(), 4);
        let e = v
            .add(&cfg, "file:///etc", true)
            .expect_err("host paths are off");
        assert!(e.contains("allowFileUris"), "{e}");
        assert!(v.add(&cfg, "s3://b/k", true).is_err());
        cfg.allow_file_uris = true;
        let p = v.add(&cfg, "file:///models/base", true).expect("on");
        assert_eq!(p, PathBuf::from("/models/base"));
        assert!(v.volumes.iter().any(|vol| vol.host_path.is_some()));
        let mut writable = PodVolumes::new("team-a", "cm", true);
        writable
            .add(&cfg, "pvc://tailor-artifacts/finetune/x", true)
            .expect("area");
        assert_eq!(writable.mounts[1].read_only, None);
    }

    #[test]
    fn fetches_share_the_admins_cache_volume_each_namespace_in_its_own_directory() {
        let mut cfg = OperatorConfig::for_tests();
        let mut v = PodVolumes::new("team-a", "cm", true);
        v.input(&cfg, "s3://bucket/models/base", true, None)
            .expect("s3");
        let args = v.fetches[0].args.clone().unwrap_or_default();
        assert!(!args.iter().any(|a| a == "--cache"), "no cache configured");
        cfg.fetch_cache = Some(serde_json::json!({
            "hostPath": {"path": "/var/cache/tailor", "type": "DirectoryOrCreate"}
        }));
        let mut v = PodVolumes::new("team-a", "cm", true);
        v.input(&cfg, "s3://bucket/models/base", true, None)
            .expect("s3");
        v.input(&cfg, "hf://org/tokenizer", true, None).expect("hf");
        for f in &v.fetches {
            let args = f.args.clone().unwrap_or_default();
            let at = args.iter().position(|a| a == "--cache").expect("--cache");
            assert_eq!(args[at + 1], FETCH_CACHE_DIR);
            let m = f
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == FETCH_CACHE_DIR)
                .expect("cache mount");
            assert_eq!(m.sub_path.as_deref(), Some("team-a"));
        }
        // One volume for the pod, whatever the number of fetches.
        let caches: Vec<_> = v
            .volumes
            .iter()
            .filter(|vol| vol.name == crate::config::FETCH_CACHE_VOLUME)
            .collect();
        assert_eq!(caches.len(), 1);
        assert_eq!(
            caches[0].host_path.as_ref().map(|h| h.path.as_str()),
            Some("/var/cache/tailor")
        );
        // A config whose cache is not a volume source is refused at load.
        cfg.fetch_cache = Some(serde_json::json!({"hostPath": "not an object"}));
        let e = cfg.fetch_cache_volume().expect_err("invalid");
        assert!(e.to_string().contains("fetchCache"), "{e}");
    }

    #[test]
    fn with_an_artifact_store_a_pods_own_artifacts_are_uris_it_reaches_with_the_store_secret() {
        let mut cfg = OperatorConfig::for_tests();
        let mut v = PodVolumes::new("team-a", "cm", true);
        // Without a store: the area of the claim, mounted.
        let p = v
            .own(&cfg, "pvc://tailor-artifacts/datasets/d/h", true)
            .expect("area");
        assert_eq!(p, PathBuf::from("/artifacts/datasets/d/h"));
        assert!(v.store_env().is_none());
        cfg.artifact_store = Some(crate::config::ArtifactStore {
            uri: "s3://acme/tailor".into(),
            credentials_secret: "tailor-store".into(),
        });
        let mut v = PodVolumes::new("team-a", "cm", true);
        let p = v
            .own(&cfg, "s3://acme/tailor/team-a/datasets/d/h", true)
            .expect("store");
        assert_eq!(p, PathBuf::from("s3://acme/tailor/team-a/datasets/d/h"));
        // No claim, no init container: the pod's process reads and writes there itself.
        assert!(
            v.volumes
                .iter()
                .all(|vol| vol.persistent_volume_claim.is_none())
        );
        assert!(v.fetches.is_empty());
        let env = v.store_env().expect("store Secret");
        assert_eq!(
            env[0].secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("tailor-store")
        );
        // Another namespace's area of the store is not its own.
        let mut v = PodVolumes::new("team-b", "cm", true);
        assert!(
            v.own(&cfg, "s3://acme/tailor/team-a/datasets/d/h", true)
                .is_err()
        );
    }

    #[test]
    fn remote_inputs_are_fetched_by_one_init_container_each_with_their_secret() {
        let cfg: OperatorConfig = serde_json::from_value(serde_json::json!({
            "trainerImage": "t", "fetchImage": "tailor-fetch:dev"
        }))
        .expect("config");
        let mut v = PodVolumes::new("team-a", "cm", true);
        let base = v
            .input(&cfg, "hf://org/model@main", true, Some("hub"))
            .expect("hf");
        assert_eq!(base, PathBuf::from("/inputs/0"));
        let data = v
            .input(&cfg, "s3://bucket/data/train.jsonl", false, Some("s3"))
            .expect("s3 file");
        assert_eq!(data, PathBuf::from("/inputs/1/train.jsonl"));
        let prefix = v
            .input(&cfg, "s3://bucket/data/", true, Some("s3"))
            .expect("s3 prefix");
        assert_eq!(prefix, PathBuf::from("/inputs/2"));
        // The same URI again is the same fetch.
        let again = v
            .input(&cfg, "hf://org/model@main", true, Some("hub"))
            .expect("again");
        assert_eq!(again, base);
        assert_eq!(v.fetches.len(), 3);
        let f = &v.fetches[1];
        assert_eq!(f.name, "fetch-1");
        assert_eq!(f.image.as_deref(), Some("tailor-fetch:dev"));
        assert_eq!(
            f.args.as_deref().unwrap_or_default()[..2],
            ["s3://bucket/data/train.jsonl", "/inputs/1"]
        );
        let secret = f
            .env_from
            .iter()
            .flatten()
            .find_map(|e| e.secret_ref.clone());
        assert_eq!(secret.map(|s| s.name), Some("s3".to_string()));
        assert_eq!(
            f.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        // One emptyDir for all of them, read-only in the main container.
        assert_eq!(
            v.volumes.iter().filter(|x| x.empty_dir.is_some()).count(),
            1
        );
        let m = v
            .mounts
            .iter()
            .find(|m| m.mount_path == "/inputs")
            .expect("mount");
        assert_eq!(m.read_only, Some(true));

        // Bad input, each named.
        let e = v.input(&cfg, "s3://", true, None).expect_err("no bucket");
        assert!(e.contains("s3://"), "{e}");
        let e = v
            .input(&cfg, "pvc://tailor-artifacts/x", true, Some("s3"))
            .expect_err("credentials for a mount");
        assert!(e.contains("credentialsSecretRef"), "{e}");
        let e = v
            .add(&cfg, "s3://bucket/out", true)
            .expect_err("outputs stay on the volume");
        assert!(
            e.contains("s3://bucket/out") && e.contains("pvc://tailor-artifacts/"),
            "{e}"
        );
    }
}
