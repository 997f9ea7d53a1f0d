//! The deployment IoT Hub takes (`az iot edge set-modules --content`): the template's document with
//! `$schema-template` removed and every module's createOptions as JSON strings in 512-character chunks.

use serde_json::Value;

use crate::create_options::{self, chunk, chunk_key};
use crate::model::Manifest;

impl Manifest {
    /// The document as a deployment: `$schema-template` dropped, and for every module (system modules
    /// too) createOptions written as a compact JSON string cut into `createOptions`, `createOptions01`, ..
    /// of at most 512 characters, as iotedgedev's genconfig writes them. Everything else is kept as it is.
    /// createOptions that are neither an object nor strings are left alone ([`Manifest::validate`] reports them).
    pub fn to_deployment_json(&self) -> Value {
        let mut doc = self.raw().clone();
        if let Some(top) = doc.as_object_mut() {
            top.remove("$schema-template");
        }
        let key = self.content_key();
        let Some(agent) = doc
            .get_mut(key)
            .and_then(|c| c.get_mut("$edgeAgent"))
            .and_then(Value::as_object_mut)
        else {
            return doc;
        };
        for (agent_key, value) in agent.iter_mut() {
            if agent_key == "properties.desired" {
                for group in ["systemModules", "modules"] {
                    if let Some(modules) = value.get_mut(group).and_then(Value::as_object_mut) {
                        for (name, module) in modules.iter_mut() {
                            let ordered = self
                                .ordered_create_options
                                .get(&(group.to_owned(), name.clone()));
                            convert_module(module, ordered);
                        }
                    }
                }
            } else if agent_key.starts_with("properties.desired.modules.")
                || agent_key.starts_with("properties.desired.systemModules.")
            {
                convert_module(value, None);
            }
        }
        doc
    }
}

/// `ordered`: the createOptions object minified in the document's key order, when known.
fn convert_module(module: &mut Value, ordered: Option<&String>) {
    let Some(settings) = module.get_mut("settings").and_then(Value::as_object_mut) else {
        return;
    };
    if !settings.contains_key("createOptions") {
        return;
    }
    let text = match (settings.get("createOptions"), ordered) {
        (Some(Value::Object(_)), Some(text)) => text.clone(),
        _ => match create_options::text_of(settings) {
            Some(text) => text,
            None => return,
        },
    };
    let old: Vec<String> = settings
        .keys()
        .filter(|k| create_options::chunk_number(k).is_some())
        .cloned()
        .collect();
    for k in old {
        settings.remove(&k);
    }
    let pieces = chunk(&text);
    if pieces.is_empty() {
        settings.insert("createOptions".into(), Value::String(String::new()));
    }
    for (i, piece) in pieces.into_iter().enumerate() {
        settings.insert(chunk_key(i), Value::String(piece));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_become_chunked_strings_and_schema_template_goes() {
        let big: Vec<String> = (0..60).map(|i| format!("VAR_{i:03}=some value")).collect();
        let doc = json!({"$schema-template": "4.0.0", "modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1", "runtime": {"type": "docker", "settings": {}},
                "systemModules": {
                    "edgeAgent": {"type": "docker", "settings": {"image": "a:1", "createOptions": {}}},
                    "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                                "settings": {"image": "h:1", "createOptions": {"HostConfig": {"PortBindings": {"8883/tcp": [{"HostPort": "8883"}]}}}}}
                },
                "modules": {"M": {"type": "docker", "status": "running", "restartPolicy": "always",
                                  "settings": {"image": "m:1", "createOptions": {"Env": big}}}}
            }},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.2", "routes": {}}}
        }});
        let m = Manifest::from_value(doc).unwrap();
        let out = m.to_deployment_json();
        assert!(out.get("$schema-template").is_none());
        let desired = &out["modulesContent"]["$edgeAgent"]["properties.desired"];
        assert_eq!(
            desired["systemModules"]["edgeAgent"]["settings"]["createOptions"],
            "{}"
        );
        assert_eq!(
            desired["systemModules"]["edgeHub"]["settings"]["createOptions"],
            r#"{"HostConfig":{"PortBindings":{"8883/tcp":[{"HostPort":"8883"}]}}}"#
        );
        let settings = desired["modules"]["M"]["settings"].as_object().unwrap();
        let mut joined = String::new();
        let mut i = 0;
        while let Some(Value::String(s)) = settings.get(&chunk_key(i)) {
            assert!(s.chars().count() <= 512);
            joined.push_str(s);
            i += 1;
        }
        assert!(i >= 2, "expected several chunks, got {i}");
        let back: Value = serde_json::from_str(&joined).unwrap();
        assert_eq!(back["Env"].as_array().unwrap().len(), 60);
        // Converting a deployment again changes nothing.
        let again = Manifest::from_value(out.clone())
            .unwrap()
            .to_deployment_json();
        assert_eq!(again, out);
    }
}
