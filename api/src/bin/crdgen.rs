//! Writes the CRD YAML of every tailor kind: `crdgen --out crds/` (or to stdout without --out).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Generate tailor's CustomResourceDefinitions")]
struct Args {
    /// Directory to write one YAML file per kind into; stdout when absent.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (file, yaml) in tailor_api::crd_files().context("serializing CRDs")? {
        match &args.out {
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
