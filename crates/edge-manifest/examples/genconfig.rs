//! `iotedgedev solution genconfig` without Python: expands a deployment template for one platform.
//!
//! Usage: cargo run -p edge-manifest --example genconfig -- [TEMPLATE] [PLATFORM] [OUT_DIR]
//! (defaults: deployment.template.json amd64 config). Variables come from `.env` beside the template
//! (when present) and the environment, the environment winning, as in iotedgedev.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let template = PathBuf::from(
        args.first()
            .map_or("deployment.template.json", String::as_str),
    );
    let platform = args.get(1).map_or("amd64", String::as_str);
    let out_dir = PathBuf::from(args.get(2).map_or("config", String::as_str));

    let dotenv_path = template
        .parent()
        .map_or_else(|| PathBuf::from(".env"), |p| p.join(".env"));
    let dotenv = if dotenv_path.is_file() {
        match edge_manifest::load_dotenv(&dotenv_path) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("genconfig: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        BTreeMap::new()
    };
    let env = edge_manifest::merge_env(dotenv, std::env::vars());
    match edge_manifest::genconfig(&template, platform, &out_dir, &env) {
        Ok(path) => {
            // Warnings (`:latest`, unset variables) do not stop genconfig; show them.
            if let Ok(m) = edge_manifest::Manifest::load(&path) {
                if let Err(problems) = m.validate() {
                    for p in problems {
                        eprintln!("{p}");
                    }
                }
            }
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("genconfig: {e}");
            ExitCode::FAILURE
        }
    }
}
