//! Validation: every problem of a manifest at once, each with what to do about it.
//!
//! Beyond what Microsoft's JSON schemas check (structure and enums), this checks what they cannot: that
//! createOptions is JSON and fits in 8 twin values, that every route parses and names modules that exist,
//! module names that clash once case is ignored, twins of modules that do not exist and `:latest` images.
//! [`Manifest::unexpanded_variables`] lists variables the template expansion left as `$NAME`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::create_options::{self, TWIN_VALUE_MAX_CHUNKS, TWIN_VALUE_MAX_SIZE};
use crate::error::{ManifestError, RouteEnd};
use crate::model::{Manifest, ModuleSpec, RouteSpec};

/// Parses one route with `edge-routes` and applies the object form's priority and time-to-live.
pub(crate) fn parse_route_spec(spec: &RouteSpec) -> Result<edge_routes::Route, ManifestError> {
    let mut route = edge_routes::Route::parse(&spec.name, &spec.text).map_err(|e| {
        ManifestError::RouteParse {
            route: spec.name.clone(),
            error: e.to_string(),
        }
    })?;
    if let Some(p) = spec.priority {
        route.priority = p;
    }
    if let Some(ttl) = spec.time_to_live_secs {
        route.time_to_live_secs = Some(ttl);
    }
    Ok(route)
}

impl Manifest {
    /// Checks the whole manifest and returns ALL problems, errors and warnings
    /// ([`ManifestError::is_warning`]) alike, or `Ok(())` when there are none.
    pub fn validate(&self) -> Result<(), Vec<ManifestError>> {
        // The parse recorded its problems; parsing the same document again gives fresh copies of them.
        let mut problems = match Manifest::parse(self.raw().clone()) {
            Ok((_, problems)) => problems,
            Err(e) => vec![e],
        };

        let mut all_names: Vec<&str> = self.system_modules.keys().map(String::as_str).collect();
        for (name, spec) in &self.modules {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                problems.push(ManifestError::BadModuleName {
                    module: name.clone(),
                });
            }
            all_names.push(name);
            check_image(name, spec, &mut problems);
        }
        for (name, spec) in &self.system_modules {
            check_image(name, spec, &mut problems);
        }
        // Module names that clash without case (edgeAgent/edgeHub included).
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for name in &all_names {
            if let Some(first) = seen.get(&name.to_lowercase()) {
                if first != name {
                    problems.push(ManifestError::DuplicateModuleName {
                        first: (*first).to_owned(),
                        second: (*name).to_owned(),
                    });
                }
            } else {
                seen.insert(name.to_lowercase(), name);
            }
        }

        // createOptions size, per module, system modules included (as iotedgedev checks).
        for (name, settings) in self.module_settings() {
            if let Some(text) = create_options::text_of(settings) {
                let len = text.chars().count();
                if len > TWIN_VALUE_MAX_SIZE * TWIN_VALUE_MAX_CHUNKS {
                    problems.push(ManifestError::CreateOptionsTooBig {
                        module: name.to_owned(),
                        len,
                    });
                }
            }
        }

        // Schema versions IoT Edge 1.6 reads: edgeAgent 1.0 and 1.1, edgeHub 1.0 to 1.2.
        let (agent, hub) = self.schema_versions();
        if let Some(v) = agent.filter(|v| !["1.0", "1.1"].contains(v)) {
            problems.push(ManifestError::UnsupportedSchemaVersion {
                section: "$edgeAgent",
                version: v.to_owned(),
                accepted: "1.0, 1.1",
                latest: "1.1",
            });
        }
        if let Some(v) = hub.filter(|v| !["1.0", "1.1", "1.2"].contains(v)) {
            problems.push(ManifestError::UnsupportedSchemaVersion {
                section: "$edgeHub",
                version: v.to_owned(),
                accepted: "1.0, 1.1, 1.2",
                latest: "1.2",
            });
        }
        // The runtime's own images: a release out of support is a warning.
        for (name, settings) in self.module_settings() {
            if name != "edgeAgent" && name != "edgeHub" {
                continue;
            }
            let image = settings.get("image").and_then(|v| v.as_str()).unwrap_or("");
            if runtime_out_of_support(image) {
                problems.push(ManifestError::UnsupportedRuntime {
                    module: name.to_owned(),
                    image: image.to_owned(),
                });
            }
        }

        // Twins of modules that do not exist (a layered deployment may add twins for modules of another layer).
        if !self.layered {
            for twin in self.twins.keys() {
                if !self.modules.contains_key(twin) {
                    problems.push(ManifestError::TwinWithoutModule {
                        module: twin.clone(),
                        hint: self.did_you_mean(twin),
                    });
                }
            }
        }

        // Routes.
        let hub_schema_1_0 = self.hub_schema_version.as_deref() == Some("1.0");
        for spec in &self.route_specs {
            if spec.name.is_empty()
                || spec
                    .name
                    .chars()
                    .any(|c| c == '.' || c == '$' || c == '#' || c == ' ')
            {
                problems.push(ManifestError::RouteShape {
                    route: spec.name.clone(),
                    problem: "a route name may not be empty or hold `.`, `$`, `#` or spaces".into(),
                });
            }
            if spec.object_form && hub_schema_1_0 {
                problems.push(ManifestError::RouteShape {
                    route: spec.name.clone(),
                    problem: "the {\"route\", \"priority\", \"timeToLiveSecs\"} form needs $edgeHub schemaVersion 1.1 or later; raise schemaVersion".into(),
                });
            }
            let route = match parse_route_spec(spec) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            if self.layered {
                continue;
            }
            let source_module = match &route.source {
                edge_routes::Source::Module { module }
                | edge_routes::Source::ModuleOutputs { module }
                | edge_routes::Source::ModuleOutput { module, .. } => Some(module.clone()),
                _ => None,
            };
            if let Some(module) = source_module {
                if !self.modules.contains_key(&module) {
                    problems.push(ManifestError::RouteUnknownModule {
                        route: spec.name.clone(),
                        hint: self.did_you_mean(&module),
                        module,
                        end: RouteEnd::Source,
                    });
                }
            }
            if let edge_routes::Sink::ModuleInput { module, .. } = &route.sink {
                if !self.modules.contains_key(module) {
                    problems.push(ManifestError::RouteUnknownModule {
                        route: spec.name.clone(),
                        hint: self.did_you_mean(module),
                        module: module.clone(),
                        end: RouteEnd::Sink,
                    });
                }
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Values a template expansion left as `$NAME` because the variable was not set: registry credentials
    /// that are exactly `$NAME`/`${NAME}` and images holding `$`. All are warnings
    /// ([`ManifestError::UnexpandedVariable`]). They matter for a deployment to a device (the image cannot
    /// be pulled), not for running modules locally, so [`Manifest::validate`] leaves them out; genconfig
    /// users print them.
    pub fn unexpanded_variables(&self) -> Vec<ManifestError> {
        let mut out = Vec::new();
        // A password may hold `$` itself, so only a whole-value reference counts.
        for (cred_name, cred) in &self.runtime.registry_credentials {
            for (field, value) in [
                ("username", &cred.username),
                ("password", &cred.password),
                ("address", &cred.address),
            ] {
                if is_variable_reference(value) {
                    out.push(ManifestError::UnexpandedVariable {
                        place: format!("registryCredentials.{cred_name}.{field}"),
                        value: value.clone(),
                    });
                }
            }
        }
        for (name, spec) in self.system_modules.iter().chain(&self.modules) {
            if spec.image.contains('$') && !is_placeholder(spec.image.trim()) {
                out.push(ManifestError::UnexpandedVariable {
                    place: format!("the image of module `{name}`"),
                    value: spec.image.clone(),
                });
            }
        }
        out
    }

    /// ` (did you mean `X`?)` when a module's name matches without case.
    fn did_you_mean(&self, name: &str) -> String {
        let lower = name.to_lowercase();
        self.modules
            .keys()
            .find(|k| k.to_lowercase() == lower)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default()
    }

    /// `settings` of every module in the raw document, system modules included.
    pub(crate) fn module_settings(&self) -> Vec<(&str, &serde_json::Map<String, Value>)> {
        let mut out = Vec::new();
        let Some(agent) = self
            .raw()
            .get(self.content_key())
            .and_then(|c| c.get("$edgeAgent"))
            .and_then(Value::as_object)
        else {
            return out;
        };
        if let Some(desired) = agent.get("properties.desired") {
            for group in ["systemModules", "modules"] {
                if let Some(modules) = desired.get(group).and_then(Value::as_object) {
                    for (name, m) in modules {
                        if let Some(s) = m.get("settings").and_then(Value::as_object) {
                            out.push((name.as_str(), s));
                        }
                    }
                }
            }
        }
        for (key, m) in agent {
            if let Some(name) = key.strip_prefix("properties.desired.modules.") {
                if let Some(s) = m.get("settings").and_then(Value::as_object) {
                    out.push((name, s));
                }
            }
        }
        out
    }
}

fn check_image(name: &str, spec: &ModuleSpec, problems: &mut Vec<ManifestError>) {
    let image = spec.image.trim();
    if image.is_empty() {
        return; // reported as MissingImage by the parse
    }
    if is_placeholder(image) {
        return;
    }
    if image.contains('$') {
        return; // see `unexpanded_variables`
    }
    if image_means_latest(image) {
        problems.push(ManifestError::LatestTag {
            module: name.to_owned(),
            image: image.to_owned(),
        });
    }
}

/// True when `value` is exactly `$NAME` or `${NAME}`: a variable the template expansion did not know.
pub(crate) fn is_variable_reference(value: &str) -> bool {
    let Some(rest) = value.strip_prefix('$') else {
        return false;
    };
    let name = rest
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(rest);
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `${MODULES.x}`, `${MODULES.x.platform}` or `${MODULEDIR<path>..}`: left for genconfig to expand.
pub(crate) fn is_placeholder(image: &str) -> bool {
    (image.starts_with("${MODULES.") || image.starts_with("${MODULEDIR<")) && image.ends_with('}')
}

/// True when the reference has no tag (Docker then pulls `:latest`) or the tag `latest`; a digest pins it.
pub(crate) fn image_means_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => true,
        Some((_, tag)) => tag == "latest",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn latest_images_are_spotted() {
        assert!(image_means_latest("mcr.microsoft.com/azureiotedge-agent"));
        assert!(image_means_latest("localhost:5000/x:latest"));
        assert!(image_means_latest("localhost:5000/x"));
        assert!(!image_means_latest("localhost:5000/x:1.0"));
        assert!(!image_means_latest("x@sha256:abcd"));
        assert!(is_placeholder("${MODULES.esp-sim}"));
        assert!(is_placeholder("${MODULES.esp-sim.arm32v7}"));
        assert!(!is_placeholder("$REGISTRY/x:1"));
        assert!(is_variable_reference("$CONTAINER_REGISTRY_USERNAME"));
        assert!(is_variable_reference("${CONTAINER_REGISTRY_PASSWORD}"));
        assert!(!is_variable_reference("p@ss$word"));
        assert!(!is_variable_reference("$ecret-pass"));
        assert!(!is_variable_reference("plain"));
    }
}

/// Whether a system module image (`mcr.microsoft.com/azureiotedge-agent:1.5`, `...-hub:1.4.10`) is of an
/// IoT Edge release before 1.6, whose support has ended. Other tags (`latest`, digests, private
/// mirrors without a version) are not judged.
pub(crate) fn runtime_out_of_support(image: &str) -> bool {
    if !image.contains("azureiotedge-") {
        return false;
    }
    let Some((_, tag)) = image.rsplit_once(':') else {
        return false;
    };
    let mut parts = tag.split(['.', '-']);
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        return false;
    };
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(major), Ok(minor)) => (major, minor) < (1, 6),
        _ => false,
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::runtime_out_of_support;

    #[test]
    fn releases_before_1_6_are_out_of_support() {
        assert!(runtime_out_of_support(
            "mcr.microsoft.com/azureiotedge-agent:1.5"
        ));
        assert!(runtime_out_of_support(
            "mcr.microsoft.com/azureiotedge-hub:1.4.10-linux-arm32v7"
        ));
        assert!(!runtime_out_of_support(
            "mcr.microsoft.com/azureiotedge-hub:1.6"
        ));
        assert!(!runtime_out_of_support(
            "mcr.microsoft.com/azureiotedge-agent:1.6.2"
        ));
        assert!(!runtime_out_of_support(
            "mcr.microsoft.com/azureiotedge-agent:2.0"
        ));
        assert!(!runtime_out_of_support(
            "myregistry/mqtt-server:1.0.0-amd64"
        ));
        assert!(!runtime_out_of_support(
            "mcr.microsoft.com/azureiotedge-agent"
        ));
    }
}
