//! Writes the CRD YAML of every tailor kind (`crdgen --out crds/`, or to stdout without
//! `--out` and `--docs`) and the API reference rendered from it (`crdgen --docs docs/api.md`).

mod apidoc;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::schema::{OptionalEnum, OptionalIntOrString, StructuralSchemaRewriter};
use schemars::generate::SchemaSettings;
use schemars::transform::AddNullable;

#[derive(Parser)]
#[command(about = "Generate tailor's CustomResourceDefinitions and API reference")]
struct Args {
    /// Directory to write one YAML file per kind into; stdout when neither this nor --docs is
    /// given.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Markdown file to write the API reference into (every field of every kind, from the
    /// CRDs' OpenAPI schemas), e.g. docs/api.md.
    #[arg(long)]
    docs: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.out.is_some() || args.docs.is_none() {
        write_crds(args.out.as_deref())?;
    }
    if let Some(path) = &args.docs {
        std::fs::write(path, api_reference()?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_crds(out: Option<&Path>) -> anyhow::Result<()> {
    for (file, yaml) in tailor_api::crd_files().context("serializing CRDs")? {
        match out {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None if file.ends_with(".yaml") => {
                print!("---\n{yaml}")
            }
            None => {}
        }
    }
    Ok(())
}

fn api_reference() -> anyhow::Result<String> {
    let crds = tailor_api::crds()
        .into_iter()
        .map(|(_, crd)| serde_json::to_value(crd))
        .collect::<Result<Vec<_>, _>>()
        .context("serializing CRDs")?;
    Ok(apidoc::render(&crds, &embedded_types()?))
}

/// The Kubernetes types tailor's schemas use (or may use) as field types: the reference names
/// them rather than listing their fields.
fn embedded_types() -> anyhow::Result<Vec<apidoc::Embedded>> {
    Ok(vec![
        embedded::<Affinity>("Affinity", "core/v1")?,
        embedded::<Condition>("Condition", "meta/v1")?,
        embedded::<EnvVar>("EnvVar", "core/v1")?,
        embedded::<LocalObjectReference>("LocalObjectReference", "core/v1")?,
        embedded::<Toleration>("Toleration", "core/v1")?,
        embedded::<TopologySpreadConstraint>("TopologySpreadConstraint", "core/v1")?,
        embedded::<Volume>("Volume", "core/v1")?,
        embedded::<VolumeMount>("VolumeMount", "core/v1")?,
    ])
}

/// `T` as it appears inside a CRD: generated with kube-derive's settings for CRD schemas and
/// passed through `JSONSchemaProps` like the CRD itself, so its `properties` compare equal.
fn embedded<T: schemars::JsonSchema>(name: &str, api: &str) -> anyhow::Result<apidoc::Embedded> {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(AddNullable::default())
        .with_transform(StructuralSchemaRewriter)
        .with_transform(OptionalEnum)
        .with_transform(OptionalIntOrString)
        .into_generator();
    let schema: JSONSchemaProps =
        serde_json::from_value(serde_json::to_value(generator.into_root_schema_for::<T>())?)
            .with_context(|| format!("the schema of {name}"))?;
    Ok(apidoc::Embedded {
        name: name.into(),
        api: api.into(),
        properties: serde_json::to_value(schema)?["properties"].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Kubernetes types in today's CRDs are recognised as kube generates them there.
    #[test]
    fn kubernetes_types_in_the_crds_are_named_not_expanded() {
        let doc = api_reference().expect("renders");
        assert!(
            doc.contains("| `status.conditions` | []Condition |"),
            "{doc}"
        );
        assert!(
            doc.contains("| `spec.tolerations` | []Toleration |"),
            "{doc}"
        );
        assert!(!doc.contains("status.conditions[].reason"), "{doc}");
        assert!(!doc.contains("spec.tolerations[].effect"), "{doc}");
        // Every kind has a section with its spec and status tables.
        for kind in ["Dataset", "FineTuneJob", "LoraAdapter", "ModelDeployment"] {
            assert!(doc.contains(&format!("\n## {kind}\n")), "{kind}");
            assert!(doc.contains(&format!("\n### {kind} spec\n")), "{kind}");
            assert!(doc.contains(&format!("\n### {kind} status\n")), "{kind}");
        }
    }
}
