//! The one error type of the crate: every message says what is wrong and what to do about it.

use std::path::PathBuf;

/// Where a module name was found in a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteEnd {
    /// `FROM /messages/modules/{m}...`
    Source,
    /// `INTO BrokeredEndpoint("/modules/{m}/inputs/{i}")`
    Sink,
}

impl std::fmt::Display for RouteEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteEnd::Source => f.write_str("reads from"),
            RouteEnd::Sink => f.write_str("sends to"),
        }
    }
}

/// What can be wrong with a manifest, a template, a `module.json` or a `.env` file.
///
/// [`ManifestError::is_warning`] tells the few that do not stop a deployment (a `:latest` tag, a
/// variable left unexpanded) from the ones that do.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}; check that the folder is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{what} is not valid JSON: {source}; fix the syntax at that line and column")]
    Json {
        what: String,
        source: serde_json::Error,
    },

    #[error("{path} is {problem}; a deployment manifest needs it (see `deployment.template.json` for the shape)")]
    Structure { path: String, problem: String },

    #[error("module `{module}`: createOptions is not valid JSON ({error}); it must be a JSON object such as {{\"HostConfig\":{{}}}}, as an object in a template or as a string in a deployment")]
    CreateOptionsJson { module: String, error: String },

    #[error("module `{module}`: createOptions is {len} characters once minified; IoT Hub allows at most 4096 (8 chunks of 512), so drop settings Docker does not need")]
    CreateOptionsTooBig { module: String, len: usize },

    #[error("module `{module}`: status `{value}` is not one of `running`, `stopped`")]
    UnknownStatus { module: String, value: String },

    #[error("module `{module}`: restartPolicy `{value}` is not one of `never`, `on-failure`, `on-unhealthy`, `always`")]
    UnknownRestartPolicy { module: String, value: String },

    #[error("module `{module}`: imagePullPolicy `{value}` is not one of `on-create`, `never`")]
    UnknownImagePullPolicy { module: String, value: String },

    #[error("module `{module}`: `{field}` is missing; add it (the deployment schema requires it)")]
    MissingField { module: String, field: String },

    #[error("module `{module}`: `{field}` {problem}")]
    BadField {
        module: String,
        field: String,
        problem: String,
    },

    #[error("module `{module}` has no settings.image; set it to an image reference or a `${{MODULES.<folder>}}` placeholder")]
    MissingImage { module: String },

    #[error("warning: module `{module}` uses image `{image}`, which means `:latest`; pin a version tag so every device runs the same build")]
    LatestTag { module: String, image: String },

    #[error("{section} schemaVersion {version:?} is not one IoT Edge 1.6 reads ({accepted}); use {latest}")]
    UnsupportedSchemaVersion {
        section: &'static str,
        version: String,
        accepted: &'static str,
        latest: &'static str,
    },

    #[error("warning: {module} uses `{image}`, an IoT Edge release whose support has ended (1.5: 2026-11-10); use the 1.6 LTS image (`:1.6`, serviced until 2028-11-14)")]
    UnsupportedRuntime { module: String, image: String },

    #[error("module name `{module}` may only hold letters, digits, `_` and `-`; rename it")]
    BadModuleName { module: String },

    #[error("modules `{first}` and `{second}` differ only in case, so routes, twins and people easily pick the wrong one (and case-insensitive tools see one module); rename one")]
    DuplicateModuleName { first: String, second: String },

    #[error("modulesContent has a twin for `{module}`, but $edgeAgent has no module of that name{hint}; fix the name (it is case-sensitive)")]
    TwinWithoutModule { module: String, hint: String },

    #[error("route `{route}` does not parse: {error}")]
    RouteParse { route: String, error: String },

    #[error("route `{route}` {end} module `{module}`, which is not in the manifest{hint}; add the module or fix the name (it is case-sensitive)")]
    RouteUnknownModule {
        route: String,
        module: String,
        end: RouteEnd,
        hint: String,
    },

    #[error("route `{route}`: priority {priority} is out of range; use 0 (highest) to 9 (lowest)")]
    RoutePriority { route: String, priority: i64 },

    #[error("route `{route}`: {problem}")]
    RouteShape { route: String, problem: String },

    #[error("warning: {place} is still `{value}`: the variable was not set when the template was expanded; set it in .env or the environment")]
    UnexpandedVariable { place: String, value: String },

    #[error("{path}: {problem}")]
    ModuleJson { path: PathBuf, problem: String },

    #[error("image placeholder `{placeholder}` of module `{module}` names no folder with a module.json under {modules_dir}; the folder name after `MODULES.` is case-sensitive")]
    UnknownModuleFolder {
        module: String,
        placeholder: String,
        modules_dir: PathBuf,
    },

    #[error("image placeholder `{placeholder}` of module `{module}`: {module_json} has no Dockerfile for platform `{platform}` (it has: {available}); add it to image.tag.platforms or pick another platform")]
    PlatformMissing {
        module: String,
        placeholder: String,
        module_json: PathBuf,
        platform: String,
        available: String,
    },

    #[error("{path} line {line}: {problem}")]
    Dotenv {
        path: PathBuf,
        line: usize,
        problem: String,
    },

    #[error("the manifest has {} problem(s):\n{}", .problems.len(), list(.problems))]
    Invalid { problems: Vec<ManifestError> },
}

fn list(problems: &[ManifestError]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ManifestError {
    /// True for problems that do not make the deployment wrong, only risky: callers print them and go on.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            ManifestError::LatestTag { .. }
                | ManifestError::UnexpandedVariable { .. }
                | ManifestError::UnsupportedRuntime { .. }
        )
    }
}
