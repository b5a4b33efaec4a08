//! What each serving runtime runs (`spec.runtime`): tailor-server, or vLLM's OpenAI server
//! (`vllm serve`). Both speak the same adapter protocol (vLLM's runtime LoRA API and
//! `/v1/models`, see [`super::pods`]), so everything above the container — revisions, router,
//! analysis, canaries, rollback — is the same for both.
//!
//! vLLM's flags and environment are those of the release the operator pins
//! ([`crate::config::VLLM_IMAGE`]); its documentation is the reference for each of them.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, Probe, SecretKeySelector,
    Volume, VolumeMount,
};
use tailor_api::Runtime;
use tailor_artifacts::ArtifactUri;

use super::build::{SERVER_CONFIG_KEY, SERVER_PORT, TOKEN_DIR, TOKEN_KEY, json_logs};
use super::revision::{RevisionSpec, VLLM_LORA_RANKS};
use crate::config::OperatorConfig;
use crate::jobs::CONFIG_DIR;

/// The adapter URIs tailor-server fetches itself (what a LoraAdapter admits; not `https://`: a
/// tenant's URI must not make a server send requests where it likes).
const ADAPTER_URI_PREFIXES: &str = "s3://,gs://,az://,abfs://,hf://";

/// Flags the operator sets, with the field a user sets instead; `extraArgs` may not repeat
/// them (the engine would take the last one and break what the operator relies on).
const TAILOR_FLAGS: &[(&str, &str)] = &[
    ("--model", "spec.baseModel.uri"),
    ("--served-model-name", "spec.baseModel.servedName"),
    ("--listen", "nothing: the operator listens on the pod IP"),
    ("--max-batch-size", "spec.server.maxBatchSize"),
    ("--max-seq-length", "spec.server.maxSeqLength"),
    ("--max-loaded-adapters", "spec.server.maxLoadedAdapters"),
    ("--dtype", "spec.server.dtype"),
    ("--config", "spec.adapters"),
    (
        "--api-key-file",
        "spec.auth (the router checks users' keys)",
    ),
    ("--adapter", "spec.adapters"),
];
const VLLM_FLAGS: &[(&str, &str)] = &[
    ("--model", "spec.baseModel.uri"),
    ("--served-model-name", "spec.baseModel.servedName"),
    ("--host", "nothing: the operator listens on the pod IP"),
    ("--port", "nothing: the operator sets the port"),
    ("--uds", "nothing: the operator sets the listen address"),
    ("--enable-lora", "spec.adapters (LoRA is always on)"),
    ("--no-enable-lora", "spec.adapters (LoRA is always on)"),
    ("--lora-modules", "spec.adapters"),
    ("--max-loras", "spec.server.maxLoadedAdapters"),
    (
        "--max-lora-rank",
        "the adapters' rank (LoraAdapter spec.rank)",
    ),
    ("--tensor-parallel-size", "spec.resources.gpus"),
    ("-tp", "spec.resources.gpus"),
    ("--max-model-len", "spec.server.maxSeqLength"),
    ("--max-num-seqs", "spec.server.maxBatchSize"),
    ("--dtype", "spec.server.dtype"),
    ("--api-key", "spec.auth (the router checks users' keys)"),
];

fn managed_flags(runtime: Runtime) -> &'static [(&'static str, &'static str)] {
    match runtime {
        Runtime::Tailor => TAILOR_FLAGS,
        Runtime::Vllm => VLLM_FLAGS,
    }
}

/// Whether the revision can run on its runtime; the error names the field and what to do.
pub fn check(spec: &RevisionSpec) -> Result<(), String> {
    let p = &spec.pods;
    for (i, arg) in p.extra_args.iter().enumerate() {
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        if let Some((f, field)) = managed_flags(p.runtime).iter().find(|(f, _)| *f == flag) {
            return Err(format!(
                "spec.server.extraArgs[{i}] {arg:?}: the operator sets {f} (from {field})"
            ));
        }
    }
    if p.runtime != Runtime::Vllm {
        return Ok(());
    }
    for a in &spec.adapters {
        if ArtifactUri::parse(&a.uri).is_ok_and(|u| !u.is_local()) {
            return Err(format!(
                "adapter {} (LoraAdapter {}) is stored at {}: runtime vllm loads adapters from paths in the pod only (the artifact store's volume); copy it there or serve it with runtime tailor, which fetches adapters from buckets and the Hub",
                a.served_name, a.adapter, a.uri
            ));
        }
        let largest = VLLM_LORA_RANKS[VLLM_LORA_RANKS.len() - 1];
        if a.rank.is_some_and(|r| r > largest) {
            return Err(format!(
                "adapter {} (LoraAdapter {}) has rank {}: vLLM serves LoRA ranks up to {largest}",
                a.served_name,
                a.adapter,
                a.rank.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// The image a revision's pods run.
fn image(spec: &RevisionSpec, cfg: &OperatorConfig) -> String {
    spec.pods
        .image
        .clone()
        .unwrap_or_else(|| match spec.pods.runtime {
            Runtime::Tailor => cfg.server_image.clone(),
            Runtime::Vllm => cfg.vllm_image.clone(),
        })
}

/// vLLM's `--dtype` spelling of the server's dtype.
fn vllm_dtype(dtype: &str) -> &str {
    match dtype {
        "f32" => "float32",
        "bf16" => "bfloat16",
        "f16" => "float16",
        _ => "auto",
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    super::build::http_probe(path, "http", period, failures)
}

/// The serving container of a revision of ModelDeployment `md` (volumes, resources and
/// hardening are the caller's). `base_path` is where the pod sees the base model; `gpus` are
/// the pod's (vLLM's tensor-parallel size).
pub fn server_container(
    md: &str,
    gpus: u32,
    spec: &RevisionSpec,
    base_path: &str,
    cfg: &OperatorConfig,
) -> Container {
    let p = &spec.pods;
    let mut c = Container {
        name: "server".into(),
        image: Some(image(spec, cfg)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: SERVER_PORT,
            ..Default::default()
        }]),
        ..Default::default()
    };
    match p.runtime {
        Runtime::Tailor => {
            let mut args: Vec<String> = vec![
                "--model".into(),
                base_path.into(),
                "--served-model-name".into(),
                p.served_name.clone(),
                "--listen".into(),
                format!("$(POD_IP):{SERVER_PORT}"),
                "--max-batch-size".into(),
                p.max_batch_size.to_string(),
                "--max-seq-length".into(),
                p.max_seq_length.to_string(),
                "--max-loaded-adapters".into(),
                p.max_loaded_adapters.to_string(),
                "--dtype".into(),
                p.dtype.clone(),
                "--config".into(),
                format!("{CONFIG_DIR}/{SERVER_CONFIG_KEY}"),
                // Inference and the adapter API answer only the router and the operator.
                "--api-key-file".into(),
                format!("{TOKEN_DIR}/{TOKEN_KEY}"),
            ];
            args.extend(p.extra_args.iter().cloned());
            c.args = Some(args);
            c.env = Some(vec![
                crate::pods::pod_ip_env(),
                json_logs(),
                env("TAILOR_SERVER_ADAPTER_URI_PREFIXES", ADAPTER_URI_PREFIXES),
            ]);
            c.readiness_probe = Some(http_probe("/ready", 2, 3));
            c.liveness_probe = Some(Probe {
                // Loading a large base model takes a while; /health answers at once.
                initial_delay_seconds: Some(10),
                ..http_probe("/health", 10, 6)
            });
        }
        Runtime::Vllm => {
            // `vllm serve MODEL`: the image's entrypoint since v0.9, named here so that an
            // older image or a mirror with another entrypoint runs the same command.
            c.command = Some(vec!["vllm".into(), "serve".into()]);
            let tp = gpus.max(1);
            let mut args: Vec<String> = vec![
                base_path.into(),
                "--served-model-name".into(),
                p.served_name.clone(),
                "--host".into(),
                "$(POD_IP)".into(),
                "--port".into(),
                SERVER_PORT.to_string(),
                "--enable-lora".into(),
                "--max-loras".into(),
                p.max_loaded_adapters.to_string(),
                "--max-lora-rank".into(),
                p.max_lora_rank
                    .unwrap_or(super::revision::VLLM_DEFAULT_LORA_RANK)
                    .to_string(),
                "--tensor-parallel-size".into(),
                tp.to_string(),
                "--max-model-len".into(),
                p.max_seq_length.to_string(),
                "--max-num-seqs".into(),
                p.max_batch_size.to_string(),
                "--dtype".into(),
                vllm_dtype(&p.dtype).into(),
            ];
            args.extend(p.extra_args.iter().cloned());
            c.args = Some(args);
            c.env = Some(vec![
                crate::pods::pod_ip_env(),
                // The runtime LoRA API (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`)
                // exists only with this set.
                env("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True"),
                // `/v1/*` (inference and the LoRA API) answers only the deployment's token.
                EnvVar {
                    name: "VLLM_API_KEY".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: super::build::token_secret_name(md),
                            key: TOKEN_KEY.into(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                // Models are local paths; nothing is downloaded at run time, nothing reported.
                env("HF_HUB_OFFLINE", "1"),
                env("VLLM_NO_USAGE_STATS", "1"),
                env("DO_NOT_TRACK", "1"),
                // The pod runs as a UID without a passwd entry: getpass.getuser() (torch's
                // compile caches) reads USER before it asks the passwd file.
                env("USER", "vllm"),
            ]);
            // vLLM listens only once the model is loaded; `/health` then says whether the
            // engine lives. Loading a 70B checkpoint takes minutes: a startup probe allows 30.
            c.startup_probe = Some(http_probe("/health", 10, 180));
            c.readiness_probe = Some(http_probe("/health", 5, 3));
            c.liveness_probe = Some(http_probe("/health", 10, 6));
        }
    }
    c
}

/// Volumes a runtime needs besides the model's: vLLM's workers share tensors through
/// `/dev/shm`, which a container's default 64 MiB does not hold (tensor parallelism).
pub fn runtime_volumes(spec: &RevisionSpec) -> Vec<(Volume, VolumeMount)> {
    match spec.pods.runtime {
        Runtime::Tailor => vec![],
        Runtime::Vllm => vec![(
            Volume {
                name: "shm".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            VolumeMount {
                name: "shm".into(),
                mount_path: "/dev/shm".into(),
                ..Default::default()
            },
        )],
    }
}
