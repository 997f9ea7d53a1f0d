//! The parsed deployment: typed where the runtime uses a field, the raw JSON kept for everything else.
//!
//! Parsing is tolerant: only a document that is not a manifest at all (not JSON, no `modulesContent`, no
//! `$edgeAgent`) fails. Every other problem (an unknown status, createOptions that are not JSON, a module
//! without an image) is recorded, the field gets its default, and [`Manifest::validate`] reports them all
//! at once. Callers must therefore call `validate` before they act on a manifest.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::create_options;
use crate::error::ManifestError;

/// Default of `$edgeHub` `storeAndForwardConfiguration.timeToLiveSecs`, as edgeHub has it: 2 hours.
pub const DEFAULT_STORE_AND_FORWARD_TTL_SECS: u32 = 7200;

/// `status` of a module: whether edgeAgent keeps it running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleStatus {
    Running,
    Stopped,
}

impl ModuleStatus {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(ModuleStatus::Running),
            "stopped" => Some(ModuleStatus::Stopped),
            _ => None,
        }
    }

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleStatus::Running => "running",
            ModuleStatus::Stopped => "stopped",
        }
    }
}

/// `restartPolicy` of a module: when edgeAgent restarts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart.
    Never,
    /// Restart when it exits with a non-zero code.
    OnFailure,
    /// Restart when it crashes or reports itself unhealthy.
    OnUnhealthy,
    /// Always restart, whatever the exit code.
    Always,
}

impl RestartPolicy {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "never" => Some(RestartPolicy::Never),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "on-unhealthy" => Some(RestartPolicy::OnUnhealthy),
            "always" => Some(RestartPolicy::Always),
            _ => None,
        }
    }

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::OnUnhealthy => "on-unhealthy",
            RestartPolicy::Always => "always",
        }
    }
}

/// `imagePullPolicy` of a module (edgeAgent 1.1 schema); default `on-create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePullPolicy {
    OnCreate,
    Never,
}

/// One module of `$edgeAgent` (`modules.{name}` or `systemModules.{edgeAgent,edgeHub}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    /// `version`: free text that edgeAgent compares to decide on a restart; None when absent.
    pub version: Option<String>,
    /// `type`: always `docker` in practice; empty when absent.
    pub module_type: String,
    /// `status`; `running` when absent or unknown (the unknown value is a validation problem).
    pub status: ModuleStatus,
    /// `restartPolicy`; `always` when absent or unknown (the unknown value is a validation problem).
    pub restart_policy: RestartPolicy,
    /// `imagePullPolicy`; `on-create` when absent.
    pub image_pull_policy: ImagePullPolicy,
    /// `startupOrder`: lower starts first; None (absent) starts after all that have one.
    pub startup_order: Option<u32>,
    /// `env.{K}.value`, numbers and booleans written as text.
    pub env: BTreeMap<String, String>,
    /// `settings.image`: an image reference, or a `${MODULES.<folder>}` placeholder in a template.
    pub image: String,
    /// `settings.createOptions` (+ `createOptions01`.. joined), parsed: a JSON object; `{}` when absent
    /// or empty, `null` when it is not valid JSON (a validation problem).
    pub create_options: Value,
}

/// `runtime.settings.registryCredentials.{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    pub username: String,
    pub password: String,
    pub address: String,
}

/// `runtime` of `$edgeAgent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeSpec {
    /// `runtime.type`: `docker`.
    pub runtime_type: String,
    /// `runtime.settings.minDockerVersion`, e.g. `v1.25`.
    pub min_docker_version: Option<String>,
    /// `runtime.settings.loggingOptions` (a string, often empty).
    pub logging_options: Option<String>,
    /// `runtime.settings.registryCredentials` by name.
    pub registry_credentials: BTreeMap<String, RegistryCredential>,
}

/// One entry of `$edgeHub` `routes`, before the route grammar is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The key in `routes`.
    pub name: String,
    /// The route text (`FROM ... INTO ...`).
    pub text: String,
    /// `priority` of the object form (0 highest .. 9 lowest), None in the string form.
    pub priority: Option<u8>,
    /// `timeToLiveSecs` of the object form, None in the string form (the store-and-forward TTL applies).
    pub time_to_live_secs: Option<u32>,
    /// Whether the route was written as `{"route": ..}` (needs `$edgeHub` schemaVersion 1.1 or later).
    pub object_form: bool,
}

/// A parsed deployment manifest or deployment template (see the crate documentation).
#[derive(Debug, Clone)]
pub struct Manifest {
    raw: Value,
    content_key: &'static str,
    pub(crate) schema_template: Option<String>,
    pub(crate) agent_schema_version: Option<String>,
    pub(crate) hub_schema_version: Option<String>,
    pub(crate) has_hub: bool,
    pub(crate) runtime: RuntimeSpec,
    pub(crate) system_modules: BTreeMap<String, ModuleSpec>,
    pub(crate) modules: BTreeMap<String, ModuleSpec>,
    pub(crate) route_specs: Vec<RouteSpec>,
    pub(crate) store_and_forward_ttl: Option<u32>,
    pub(crate) twins: BTreeMap<String, Value>,
    pub(crate) layered: bool,
    /// createOptions objects minified in the document's key order (when parsed from text), by (group, module).
    pub(crate) ordered_create_options: BTreeMap<(String, String), String>,
}

const AGENT: &str = "$edgeAgent";
const HUB: &str = "$edgeHub";
const DESIRED: &str = "properties.desired";

impl Manifest {
    /// Parses a manifest: a generated deployment, or a template (expanded or not: placeholders are only
    /// strings here). Fails only when the text is not a manifest at all.
    pub fn from_json_str(text: &str) -> Result<Manifest, ManifestError> {
        let raw: Value = serde_json::from_str(text).map_err(|source| ManifestError::Json {
            what: "the deployment manifest".into(),
            source,
        })?;
        let mut m = Manifest::from_value(raw)?;
        m.ordered_create_options = crate::ordered::object_create_options(text);
        Ok(m)
    }

    /// Reads and parses a manifest file (see [`Manifest::from_json_str`]).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: Value = serde_json::from_str(&text).map_err(|source| ManifestError::Json {
            what: path.display().to_string(),
            source,
        })?;
        let mut m = Manifest::from_value(raw)?;
        m.ordered_create_options = crate::ordered::object_create_options(&text);
        Ok(m)
    }

    /// Parses a manifest already read as JSON.
    pub fn from_value(raw: Value) -> Result<Manifest, ManifestError> {
        Manifest::parse(raw).map(|(m, _)| m)
    }

    /// Parses and returns the problems found on the way (which `validate` reports).
    pub(crate) fn parse(raw: Value) -> Result<(Manifest, Vec<ManifestError>), ManifestError> {
        let mut problems = Vec::new();
        let top = raw.as_object().ok_or_else(|| ManifestError::Structure {
            path: "the document".into(),
            problem: "not a JSON object".into(),
        })?;
        // iotedgedev accepts the old spelling `moduleContent` too.
        let content_key = if top.contains_key("modulesContent") {
            "modulesContent"
        } else if top.contains_key("moduleContent") {
            "moduleContent"
        } else {
            return Err(ManifestError::Structure {
                path: "modulesContent".into(),
                problem: "missing".into(),
            });
        };
        let content = top
            .get(content_key)
            .and_then(Value::as_object)
            .ok_or_else(|| ManifestError::Structure {
                path: content_key.into(),
                problem: "not a JSON object".into(),
            })?;
        let agent = content
            .get(AGENT)
            .and_then(Value::as_object)
            .ok_or_else(|| ManifestError::Structure {
                path: format!("{content_key}.{AGENT}"),
                problem: "missing or not an object".into(),
            })?;

        let mut m = Manifest {
            schema_template: top
                .get("$schema-template")
                .and_then(Value::as_str)
                .map(str::to_owned),
            content_key,
            agent_schema_version: None,
            hub_schema_version: None,
            has_hub: false,
            runtime: RuntimeSpec::default(),
            system_modules: BTreeMap::new(),
            modules: BTreeMap::new(),
            route_specs: Vec::new(),
            store_and_forward_ttl: None,
            twins: BTreeMap::new(),
            layered: false,
            ordered_create_options: BTreeMap::new(),
            raw: Value::Null,
        };

        m.parse_agent(content_key, agent, &mut problems)?;
        match content.get(HUB).and_then(Value::as_object) {
            Some(hub) => m.parse_hub(content_key, hub, &mut problems),
            None if m.layered => {}
            None => problems.push(ManifestError::Structure {
                path: format!("{content_key}.{HUB}"),
                problem: "missing or not an object".into(),
            }),
        }
        for (name, twin) in content {
            if name == AGENT || name == HUB {
                continue;
            }
            match twin.as_object().and_then(|t| t.get(DESIRED)) {
                Some(desired) => {
                    m.twins.insert(name.clone(), desired.clone());
                }
                None => problems.push(ManifestError::Structure {
                    path: format!("{content_key}.{name}.{DESIRED}"),
                    problem: "missing (a module twin is `{\"properties.desired\": {...}}`)".into(),
                }),
            }
        }
        m.raw = raw;
        Ok((m, problems))
    }

    fn parse_agent(
        &mut self,
        content_key: &str,
        agent: &Map<String, Value>,
        problems: &mut Vec<ManifestError>,
    ) -> Result<(), ManifestError> {
        let desired = match agent.get(DESIRED) {
            Some(Value::Object(d)) => d,
            Some(_) => {
                return Err(ManifestError::Structure {
                    path: format!("{content_key}.{AGENT}.{DESIRED}"),
                    problem: "not an object".into(),
                })
            }
            None => {
                // A layered deployment sets single paths: `properties.desired.modules.X`.
                let prefix = format!("{DESIRED}.modules.");
                let mut any = false;
                for (key, value) in agent {
                    if let Some(name) = key.strip_prefix(&prefix) {
                        any = true;
                        let spec = parse_module(name, value, false, problems);
                        self.modules.insert(name.to_owned(), spec);
                    }
                }
                if !any {
                    return Err(ManifestError::Structure {
                        path: format!("{content_key}.{AGENT}.{DESIRED}"),
                        problem: "missing".into(),
                    });
                }
                self.layered = true;
                return Ok(());
            }
        };
        let path = format!("{content_key}.{AGENT}.{DESIRED}");
        self.agent_schema_version = desired
            .get("schemaVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if self.agent_schema_version.is_none() {
            problems.push(ManifestError::Structure {
                path: format!("{path}.schemaVersion"),
                problem: "missing or not a string (use \"1.1\")".into(),
            });
        }
        self.runtime = parse_runtime(&path, desired.get("runtime"), problems);

        match desired.get("systemModules").and_then(Value::as_object) {
            Some(system) => {
                for name in ["edgeAgent", "edgeHub"] {
                    match system.get(name) {
                        Some(v) => {
                            let spec = parse_module(name, v, true, problems);
                            self.system_modules.insert(name.to_owned(), spec);
                        }
                        None => problems.push(ManifestError::Structure {
                            path: format!("{path}.systemModules.{name}"),
                            problem: "missing".into(),
                        }),
                    }
                }
            }
            None => problems.push(ManifestError::Structure {
                path: format!("{path}.systemModules"),
                problem: "missing or not an object".into(),
            }),
        }
        match desired.get("modules") {
            Some(Value::Object(modules)) => {
                for (name, v) in modules {
                    let spec = parse_module(name, v, false, problems);
                    self.modules.insert(name.clone(), spec);
                }
            }
            // A deployment with only system modules may leave `modules` out or empty.
            None | Some(Value::Null) => {}
            Some(_) => problems.push(ManifestError::Structure {
                path: format!("{path}.modules"),
                problem: "not an object".into(),
            }),
        }
        Ok(())
    }

    fn parse_hub(
        &mut self,
        content_key: &str,
        hub: &Map<String, Value>,
        problems: &mut Vec<ManifestError>,
    ) {
        self.has_hub = true;
        let path = format!("{content_key}.{HUB}.{DESIRED}");
        let desired = match hub.get(DESIRED).and_then(Value::as_object) {
            Some(d) => d,
            None => {
                // Layered form: `properties.desired.routes.X`.
                let prefix = format!("{DESIRED}.routes.");
                let mut any = false;
                for (key, value) in hub {
                    if let Some(name) = key.strip_prefix(&prefix) {
                        any = true;
                        if let Some(r) = parse_route(name, value, problems) {
                            self.route_specs.push(r);
                        }
                    }
                }
                if !any && !self.layered {
                    problems.push(ManifestError::Structure {
                        path,
                        problem: "missing or not an object".into(),
                    });
                }
                return;
            }
        };
        self.hub_schema_version = desired
            .get("schemaVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if self.hub_schema_version.is_none() {
            problems.push(ManifestError::Structure {
                path: format!("{path}.schemaVersion"),
                problem: "missing or not a string (use \"1.2\")".into(),
            });
        }
        match desired.get("routes") {
            Some(Value::Object(routes)) => {
                for (name, value) in routes {
                    if let Some(r) = parse_route(name, value, problems) {
                        self.route_specs.push(r);
                    }
                }
            }
            None => {}
            Some(_) => problems.push(ManifestError::Structure {
                path: format!("{path}.routes"),
                problem: "not an object of `name: route`".into(),
            }),
        }
        if let Some(sf) = desired.get("storeAndForwardConfiguration") {
            match sf.get("timeToLiveSecs").map(|v| (v, v.as_u64())) {
                Some((_, Some(ttl))) if ttl <= u64::from(u32::MAX) => {
                    self.store_and_forward_ttl = Some(ttl as u32)
                }
                Some((v, _)) => problems.push(ManifestError::Structure {
                    path: format!("{path}.storeAndForwardConfiguration.timeToLiveSecs"),
                    problem: format!("{v}, not a whole number of seconds from 0 to 4294967295"),
                }),
                None => {}
            }
        }
    }

    /// The user modules (not edgeAgent/edgeHub), by name.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &ModuleSpec)> {
        self.modules.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// One user module by its exact name.
    pub fn module(&self, name: &str) -> Option<&ModuleSpec> {
        self.modules.get(name)
    }

    /// `systemModules.edgeAgent` and `systemModules.edgeHub`, when present.
    pub fn system_modules(&self) -> impl Iterator<Item = (&str, &ModuleSpec)> {
        self.system_modules.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `runtime` of `$edgeAgent` (registry credentials and Docker settings).
    pub fn runtime(&self) -> &RuntimeSpec {
        &self.runtime
    }

    /// The routes as written, in name order, before the route grammar is applied.
    pub fn route_specs(&self) -> &[RouteSpec] {
        &self.route_specs
    }

    /// The routes, parsed by `edge-routes`, with the priority and time-to-live of the object form.
    /// Fails on the first route that does not parse; [`Manifest::validate`] lists them all.
    pub fn routes(&self) -> Result<Vec<edge_routes::Route>, ManifestError> {
        self.route_specs
            .iter()
            .map(crate::validate::parse_route_spec)
            .collect()
    }

    /// `storeAndForwardConfiguration.timeToLiveSecs`, or edgeHub's default of 7200 s.
    pub fn store_and_forward_ttl_secs(&self) -> u32 {
        self.store_and_forward_ttl
            .unwrap_or(DEFAULT_STORE_AND_FORWARD_TTL_SECS)
    }

    /// `modulesContent.{module}.properties.desired`: the module twin's desired properties.
    pub fn module_twin_desired(&self, module: &str) -> Option<&serde_json::Value> {
        self.twins.get(module)
    }

    /// `$schema-template` of a template (None in a generated deployment).
    pub fn schema_template(&self) -> Option<&str> {
        self.schema_template.as_deref()
    }

    /// `schemaVersion` of `$edgeAgent` and of `$edgeHub`.
    pub fn schema_versions(&self) -> (Option<&str>, Option<&str>) {
        (
            self.agent_schema_version.as_deref(),
            self.hub_schema_version.as_deref(),
        )
    }

    /// Whether this is a layered deployment (`properties.desired.modules.X` paths, no full desired state).
    pub fn is_layered(&self) -> bool {
        self.layered
    }

    /// The document as it was parsed.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    pub(crate) fn content_key(&self) -> &'static str {
        self.content_key
    }
}

fn parse_runtime(path: &str, v: Option<&Value>, problems: &mut Vec<ManifestError>) -> RuntimeSpec {
    let mut rt = RuntimeSpec::default();
    let Some(obj) = v.and_then(Value::as_object) else {
        problems.push(ManifestError::Structure {
            path: format!("{path}.runtime"),
            problem: "missing or not an object (use {\"type\": \"docker\", \"settings\": {...}})"
                .into(),
        });
        return rt;
    };
    rt.runtime_type = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let settings = obj.get("settings");
    let s = |k: &str| {
        settings
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    rt.min_docker_version = s("minDockerVersion");
    rt.logging_options = s("loggingOptions");
    if let Some(creds) = settings
        .and_then(|s| s.get("registryCredentials"))
        .and_then(Value::as_object)
    {
        for (name, c) in creds {
            let f = |k: &str| {
                c.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            for k in ["username", "password", "address"] {
                if c.get(k).and_then(Value::as_str).is_none() {
                    problems.push(ManifestError::Structure {
                        path: format!("{path}.runtime.settings.registryCredentials.{name}.{k}"),
                        problem: "missing or not a string".into(),
                    });
                }
            }
            rt.registry_credentials.insert(
                name.clone(),
                RegistryCredential {
                    username: f("username"),
                    password: f("password"),
                    address: f("address"),
                },
            );
        }
    }
    rt
}

/// Reads one module; `system` is true for edgeAgent/edgeHub (which may leave status and restartPolicy out).
fn parse_module(
    name: &str,
    v: &Value,
    system: bool,
    problems: &mut Vec<ManifestError>,
) -> ModuleSpec {
    let mut spec = ModuleSpec {
        version: None,
        module_type: String::new(),
        status: ModuleStatus::Running,
        restart_policy: RestartPolicy::Always,
        image_pull_policy: ImagePullPolicy::OnCreate,
        startup_order: None,
        env: BTreeMap::new(),
        image: String::new(),
        create_options: Value::Object(Map::new()),
    };
    let Some(obj) = v.as_object() else {
        problems.push(ManifestError::BadField {
            module: name.into(),
            field: "(module)".into(),
            problem: "is not a JSON object; write {\"type\": \"docker\", \"status\": .., \"settings\": {..}}".into(),
        });
        return spec;
    };
    let bad = |field: &str, problem: String| ManifestError::BadField {
        module: name.into(),
        field: field.into(),
        problem,
    };
    spec.version = match obj.get("version") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(bad(
                "version",
                format!("is {other}, not a string; quote it"),
            ));
            Some(other.to_string())
        }
    };
    spec.module_type = match obj.get("type").and_then(Value::as_str) {
        Some(t) => {
            if t != "docker" {
                problems.push(bad("type", format!("is `{t}`; the only type is `docker`")));
            }
            t.to_owned()
        }
        None => {
            problems.push(ManifestError::MissingField {
                module: name.into(),
                field: "type".into(),
            });
            String::new()
        }
    };
    let needs_status = !system || name == "edgeHub";
    match obj.get("status") {
        Some(Value::String(s)) => match ModuleStatus::parse(s) {
            Some(st) => spec.status = st,
            None => problems.push(ManifestError::UnknownStatus {
                module: name.into(),
                value: s.clone(),
            }),
        },
        Some(other) => problems.push(ManifestError::UnknownStatus {
            module: name.into(),
            value: other.to_string(),
        }),
        None if needs_status => problems.push(ManifestError::MissingField {
            module: name.into(),
            field: "status".into(),
        }),
        None => {}
    }
    match obj.get("restartPolicy") {
        Some(Value::String(s)) => match RestartPolicy::parse(s) {
            Some(p) => spec.restart_policy = p,
            None => problems.push(ManifestError::UnknownRestartPolicy {
                module: name.into(),
                value: s.clone(),
            }),
        },
        Some(other) => problems.push(ManifestError::UnknownRestartPolicy {
            module: name.into(),
            value: other.to_string(),
        }),
        None if needs_status => problems.push(ManifestError::MissingField {
            module: name.into(),
            field: "restartPolicy".into(),
        }),
        None => {}
    }
    match obj.get("imagePullPolicy") {
        None => {}
        Some(Value::String(s)) if s == "on-create" => {}
        Some(Value::String(s)) if s == "never" => spec.image_pull_policy = ImagePullPolicy::Never,
        Some(other) => problems.push(ManifestError::UnknownImagePullPolicy {
            module: name.into(),
            value: other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned),
        }),
    }
    match obj.get("startupOrder") {
        None => {}
        Some(v) => match v.as_u64().filter(|n| *n <= u64::from(u32::MAX)) {
            Some(n) => spec.startup_order = Some(n as u32),
            None => problems.push(bad(
                "startupOrder",
                format!("is {v}; use a whole number from 0 to 4294967295 (lower starts first)"),
            )),
        },
    }
    match obj.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(env)) => {
            for (k, entry) in env {
                let value = entry.get("value");
                let text = match value {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(Value::Bool(b)) => Some(b.to_string()),
                    _ => None,
                };
                match text {
                    Some(t) => {
                        spec.env.insert(k.clone(), t);
                    }
                    None => problems.push(bad(
                        &format!("env.{k}"),
                        "must be {\"value\": <string, number or boolean>}".into(),
                    )),
                }
                if k.is_empty()
                    || k.chars()
                        .any(|c| c == '+' || c == '#' || c == '$' || c == '.' || c.is_whitespace())
                {
                    problems.push(bad(
                        &format!("env.{k}"),
                        "is not a valid variable name (no `+ # $ .` or spaces)".into(),
                    ));
                }
            }
        }
        Some(_) => problems.push(bad(
            "env",
            "must be an object {\"NAME\": {\"value\": ...}}".into(),
        )),
    }
    let settings = obj.get("settings").and_then(Value::as_object);
    match settings.and_then(|s| s.get("image")) {
        Some(Value::String(img)) if !img.trim().is_empty() => spec.image = img.clone(),
        _ => problems.push(ManifestError::MissingImage {
            module: name.into(),
        }),
    }
    if let Some(settings) = settings {
        match create_options::join(settings) {
            create_options::Joined::Absent => {}
            create_options::Joined::Object(v) => spec.create_options = v,
            create_options::Joined::Text(text) => match serde_json::from_str::<Value>(&text) {
                Ok(v @ Value::Object(_)) => spec.create_options = v,
                Ok(other) => {
                    spec.create_options = Value::Null;
                    problems.push(ManifestError::CreateOptionsJson {
                        module: name.into(),
                        error: format!("it is {}, not an object", kind(&other)),
                    });
                }
                Err(e) => {
                    spec.create_options = Value::Null;
                    problems.push(ManifestError::CreateOptionsJson {
                        module: name.into(),
                        error: e.to_string(),
                    });
                }
            },
            create_options::Joined::Invalid(what) => {
                spec.create_options = Value::Null;
                problems.push(ManifestError::CreateOptionsJson {
                    module: name.into(),
                    error: what,
                });
            }
        }
    }
    spec
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_route(name: &str, v: &Value, problems: &mut Vec<ManifestError>) -> Option<RouteSpec> {
    match v {
        Value::String(text) => Some(RouteSpec {
            name: name.into(),
            text: text.clone(),
            priority: None,
            time_to_live_secs: None,
            object_form: false,
        }),
        Value::Object(obj) => {
            let Some(text) = obj.get("route").and_then(Value::as_str) else {
                problems.push(ManifestError::RouteShape {
                    route: name.into(),
                    problem: "the object form needs `\"route\": \"FROM ... INTO ...\"`".into(),
                });
                return None;
            };
            let mut spec = RouteSpec {
                name: name.into(),
                text: text.into(),
                priority: None,
                time_to_live_secs: None,
                object_form: true,
            };
            match obj.get("priority") {
                None => {}
                Some(p) => match p.as_i64() {
                    Some(n) if (0..=9).contains(&n) => spec.priority = Some(n as u8),
                    Some(n) => problems.push(ManifestError::RoutePriority {
                        route: name.into(),
                        priority: n,
                    }),
                    None => problems.push(ManifestError::RouteShape {
                        route: name.into(),
                        problem: format!("priority {p} is not a whole number; use 0 to 9"),
                    }),
                },
            }
            match obj.get("timeToLiveSecs") {
                None => {}
                Some(t) => match t.as_u64().filter(|n| *n <= u64::from(u32::MAX)) {
                    Some(n) => spec.time_to_live_secs = Some(n as u32),
                    None => problems.push(ManifestError::RouteShape {
                        route: name.into(),
                        problem: format!(
                            "timeToLiveSecs {t} is not a whole number of seconds from 0 to 4294967295"
                        ),
                    }),
                },
            }
            for key in obj.keys() {
                if !matches!(key.as_str(), "route" | "priority" | "timeToLiveSecs") {
                    problems.push(ManifestError::RouteShape {
                        route: name.into(),
                        problem: format!(
                            "unknown key `{key}`; the object form has only route, priority, timeToLiveSecs"
                        ),
                    });
                }
            }
            Some(spec)
        }
        other => {
            problems.push(ManifestError::RouteShape {
                route: name.into(),
                problem: format!(
                    "is {}; write a string \"FROM ... INTO ...\" or {{\"route\": .., \"priority\": .., \"timeToLiveSecs\": ..}}",
                    kind(other)
                ),
            });
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(modules: Value, routes: Value) -> Value {
        json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
                "systemModules": {
                    "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5", "createOptions": "{}"}},
                    "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                                "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5", "createOptions": "{}"}}
                },
                "modules": modules
            }},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": routes}}
        }})
    }

    #[test]
    fn typed_fields_are_read() {
        let (m, problems) = Manifest::parse(manifest(
            json!({"A": {"version": "1.0", "type": "docker", "status": "stopped", "restartPolicy": "on-unhealthy",
                   "startupOrder": 2, "env": {"X": {"value": "1"}, "N": {"value": 5}, "B": {"value": true}},
                   "settings": {"image": "r/a:1.0", "createOptions": "{\"HostConfig\":{\"Privileged\":",
                                "createOptions01": "true}}"}}}),
            json!({"r1": "FROM /messages/* INTO $upstream",
                   "r2": {"route": "FROM /messages/* INTO $upstream", "priority": 3, "timeToLiveSecs": 60}}),
        ))
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let a = m.module("A").unwrap();
        assert_eq!(a.status, ModuleStatus::Stopped);
        assert_eq!(a.restart_policy, RestartPolicy::OnUnhealthy);
        assert_eq!(a.startup_order, Some(2));
        assert_eq!(a.env["N"], "5");
        assert_eq!(a.env["B"], "true");
        assert_eq!(
            a.create_options,
            json!({"HostConfig": {"Privileged": true}})
        );
        assert_eq!(m.route_specs()[1].priority, Some(3));
        assert_eq!(m.route_specs()[1].time_to_live_secs, Some(60));
        assert_eq!(m.store_and_forward_ttl_secs(), 7200);
        assert_eq!(m.system_modules().count(), 2);
    }

    #[test]
    fn bad_values_become_problems_not_failures() {
        let (m, problems) = Manifest::parse(manifest(
            json!({"A": {"type": "docker", "status": "runing", "restartPolicy": "sometimes",
                   "settings": {"createOptions": "{nope"}}}),
            json!({"r": {"route": "FROM /messages/* INTO $upstream", "priority": 12}}),
        ))
        .unwrap();
        let _ = &m;
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("status `runing`")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("restartPolicy `sometimes`")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("no settings.image")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("createOptions is not valid JSON")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("priority 12")), "{text:?}");
    }

    #[test]
    fn not_a_manifest_fails() {
        assert!(Manifest::from_json_str("[1]").is_err());
        assert!(Manifest::from_json_str("{\"x\": 1}").is_err());
        assert!(Manifest::from_json_str("{\"modulesContent\": {}}").is_err());
        let e = Manifest::from_json_str("{\"modulesContent\": ").unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }

    #[test]
    fn layered_deployment_paths_are_read() {
        let (m, problems) = Manifest::parse(json!({"content": null, "modulesContent": {
            "$edgeAgent": {"properties.desired.modules.SimSensor": {
                "settings": {"image": "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.0", "createOptions": ""},
                "type": "docker", "status": "running", "restartPolicy": "always", "version": "1.0"}},
            "$edgeHub": {"properties.desired.routes.upstream": "FROM /messages/* INTO $upstream"},
            "SimSensor": {"properties.desired": {"SendData": true}}
        }}))
        .unwrap();
        assert!(m.is_layered());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.modules().count(), 1);
        assert_eq!(m.route_specs().len(), 1);
        assert_eq!(
            m.module_twin_desired("SimSensor").unwrap()["SendData"],
            true
        );
    }
}
