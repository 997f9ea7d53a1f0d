//! The deployment manifest (`edge_manifest`): parsing, validation, routes, createOptions in both
//! forms (objects in a template, 512-character string chunks in a deployment), the deployment
//! IoT Hub takes (`to_deployment_json`), and template expansion with `.env` variables and
//! `${MODULES.<folder>}` placeholders (the repository's own `modules/*/module.json`).
//!
//! Input: `manifest JSON \0 .env text` (the second part optional).
//!
//! Checks: no panic (serde_json refuses documents nested more than 128 levels before any of our
//! recursive code sees them); the deployment written from a manifest parses again as a manifest,
//! its createOptions chunks join back to the same createOptions, and writing it again gives the
//! same document; an expanded template is JSON.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use edge_manifest::{expand_template, Manifest, TemplateContext};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check_manifest(text: &str) {
    let Ok(m) = Manifest::from_json_str(text) else {
        return;
    };
    let _ = m.validate();
    let _ = m.unexpanded_variables();
    let _ = m.routes();
    let _ = m.store_and_forward_ttl_secs();
    let _ = (
        m.schema_template(),
        m.schema_versions(),
        m.is_layered(),
        m.runtime(),
    );
    let names: Vec<String> = m.modules().map(|(n, _)| n.to_string()).collect();
    for n in &names {
        let _ = m.module_twin_desired(n);
    }
    for (_, spec) in m.system_modules() {
        let _ = (spec.status.as_str(), spec.restart_policy.as_str());
    }

    let deployment = m.to_deployment_json();
    let written = serde_json::to_string(&deployment).expect("a deployment serializes");
    let again = Manifest::from_json_str(&written)
        .unwrap_or_else(|e| panic!("the deployment written from a manifest does not parse: {e}"));
    let pairs = [
        (
            m.modules().collect::<Vec<_>>(),
            again.modules().collect::<Vec<_>>(),
        ),
        (
            m.system_modules().collect::<Vec<_>>(),
            again.system_modules().collect::<Vec<_>>(),
        ),
    ];
    for (mine, theirs) in pairs {
        for (name, spec) in mine {
            let Some((_, other)) = theirs.iter().find(|(n, _)| *n == name) else {
                panic!("module {name} is missing from the deployment");
            };
            // createOptions that parsed (an object) come back the same through the string chunks
            if spec.create_options.is_object() {
                assert_eq!(
                    other.create_options, spec.create_options,
                    "createOptions of {name} change in the deployment"
                );
            }
            assert_eq!(other.image, spec.image, "image of {name}");
            assert_eq!(other.env, spec.env, "env of {name}");
        }
    }
    assert_eq!(
        again.to_deployment_json(),
        deployment,
        "writing the deployment of a deployment changes it"
    );
}

fn modules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../modules")
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let Ok(text) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    check_manifest(text);

    let dotenv = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let env = |name: &str| (name == "HOME").then(|| "/root".to_string());
    let vars: BTreeMap<String, String> =
        edge_manifest::dotenv::parse_dotenv(&dotenv, env).unwrap_or_default();
    for platform in ["amd64", "arm32v7"] {
        let ctx = TemplateContext::new(platform, modules_dir(), vars.clone());
        if let Ok(expanded) = expand_template(text, &ctx) {
            let v: Value = serde_json::from_str(&expanded)
                .unwrap_or_else(|e| panic!("an expanded template is not JSON ({e}): {expanded}"));
            let _ = Manifest::from_value(v).map(|m| m.validate());
        }
    }
});
