//! Template expansion and genconfig, as iotedgedev 3.3 does them (`iotedgedev solution genconfig`):
//!
//! 1. The whole template text goes through Python's `os.path.expandvars` ([`expand_vars`]): `$NAME` and
//!    `${NAME}` are replaced by the variable's value when it is set and left exactly as they are when it
//!    is not. So `$upstream`, `$edgeAgent`, `$edgeHub`, `$schema-template`, `$body.x` stay as written, unless
//!    a variable of that name (`upstream`, `edgeHub`, `schema`, `body`) exists: then iotedgedev rewrites
//!    them too, and so do we. Keep such names out of `.env` and the environment. Values are pasted into the
//!    text as they are (no JSON escaping), so a value with `"` or `\` breaks the JSON, as in iotedgedev.
//! 2. Every `modules/<folder>/module.json` (itself variable-expanded) gives image tags
//!    `<image.repository lowercased>:<image.tag.version>[-$CONTAINER_TAG]-<platform>` for each platform in
//!    `image.tag.platforms`; a user module whose `settings.image` is exactly `${MODULES.<folder>}` gets the
//!    tag of the chosen platform, `${MODULES.<folder>.<platform>}` that of a fixed platform, and
//!    `${MODULES.<folder>.debug}` that of `<platform>.debug`. `${MODULEDIR<path>}` and
//!    `${MODULEDIR<path>.<platform>}` do the same for a module folder given relative to the template.
//!    The folder name is case-sensitive. Unlike iotedgedev, which leaves a placeholder it cannot expand in
//!    the output, [`expand_template`] fails and says which folder or platform is missing.
//! 3. genconfig then converts createOptions to strings (minified, cut in 512-character pieces), removes
//!    `$schema-template` and writes `<out_dir>/deployment.<platform>.json`, keeping the template's key
//!    order and Python's JSON formatting, so the file is byte for byte what iotedgedev writes. Unlike
//!    iotedgedev, it refuses to write a manifest that [`Manifest::validate`] finds errors in (warnings
//!    do not stop it).
//!
//! In `module.json`, Dockerfile paths in `image.tag.platforms` and `image.contextPath` (default `.`) are
//! relative to the module's folder; `image.buildOptions` are extra `docker build` arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::ManifestError;
use crate::model::Manifest;
use crate::ordered::Node;

/// What a template is expanded with.
#[derive(Debug, Clone)]
pub struct TemplateContext {
    /// Platform of `${MODULES.<folder>}`: a key of `image.tag.platforms` (`amd64`, `arm32v7`, `arm64v8`).
    pub platform: String,
    /// The folder holding `<folder>/module.json` for `${MODULES.<folder>}`; its parent is taken as the
    /// template's folder, the base of `${MODULEDIR<path>}` paths ([`genconfig`] uses the real one).
    pub modules_dir: PathBuf,
    /// Variables for `$NAME` / `${NAME}` (`.env` and the environment, see [`merge_env`]); `CONTAINER_TAG`
    /// among them adds `-<tag>` to every image tag, as in iotedgedev.
    pub vars: BTreeMap<String, String>,
}

impl TemplateContext {
    /// A context (the same as writing the struct).
    pub fn new(
        platform: impl Into<String>,
        modules_dir: impl Into<PathBuf>,
        vars: BTreeMap<String, String>,
    ) -> TemplateContext {
        TemplateContext {
            platform: platform.into(),
            modules_dir: modules_dir.into(),
            vars,
        }
    }

    fn default_template_dir(&self) -> PathBuf {
        self.modules_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// The variables iotedgedev sees: the `.env` values, overridden by the process environment (iotedgedev
/// loads `.env` with python-dotenv's `load_dotenv`, which does not override variables already set).
pub fn merge_env(
    dotenv: BTreeMap<String, String>,
    process: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut vars = dotenv;
    vars.extend(process);
    vars
}

/// Python's `os.path.expandvars` on POSIX: `$name` (name of ASCII letters, digits, `_`) and `${anything}`
/// are replaced when `vars` has the name; otherwise left as they are. Replaced text is not scanned again.
pub fn expand_vars(text: &str, vars: &BTreeMap<String, String>) -> String {
    if !text.contains('$') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = String::with_capacity(text.len());
    let mut copied = 0; // text[..copied] is in `out` already
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let j = i + 1;
        let (name, end) = if j < bytes.len() && word(bytes[j]) {
            let mut k = j;
            while k < bytes.len() && word(bytes[k]) {
                k += 1;
            }
            (&text[j..k], k)
        } else if j < bytes.len() && bytes[j] == b'{' {
            match text[j + 1..].find('}') {
                Some(off) => (&text[j + 1..j + 1 + off], j + 1 + off + 1),
                None => {
                    i += 1;
                    continue;
                }
            }
        } else {
            i += 1;
            continue;
        };
        if let Some(value) = vars.get(name) {
            out.push_str(&text[copied..i]);
            out.push_str(value);
            copied = end;
        }
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// A module's `module.json` (iotedgedev format), variables expanded.
#[derive(Debug, Clone)]
pub struct ModuleJson {
    /// The module's folder (`modules/<folder>`).
    pub dir: PathBuf,
    /// `image.repository`, e.g. `localhost:5000/mqtt-server` (not yet lowercased).
    pub repository: String,
    /// `image.tag.version`, default `0.0.0`.
    pub version: String,
    /// `image.tag.platforms`: platform -> Dockerfile path relative to `dir`.
    pub platforms: BTreeMap<String, String>,
    /// `image.buildOptions`: extra `docker build` arguments.
    pub build_options: Vec<String>,
    /// `image.contextPath` relative to `dir`, default `.`.
    pub context_path: String,
    /// `description`.
    pub description: String,
}

#[derive(Deserialize)]
struct RawModuleJson {
    #[serde(default)]
    description: String,
    #[serde(default)]
    image: RawImage,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawImage {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: RawTag,
    #[serde(default)]
    build_options: Vec<String>,
    #[serde(default)]
    context_path: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawTag {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    platforms: BTreeMap<String, String>,
}

impl ModuleJson {
    /// Reads `<module_dir>/module.json`, expanding `$VAR`s first as iotedgedev does.
    pub fn load(
        module_dir: &Path,
        vars: &BTreeMap<String, String>,
    ) -> Result<ModuleJson, ManifestError> {
        let path = module_dir.join("module.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let raw: RawModuleJson =
            serde_json::from_str(&expand_vars(&text, vars)).map_err(|e| ManifestError::ModuleJson {
                path: path.clone(),
                problem: format!(
                    "not a valid module.json ({e}); it needs image.repository, image.tag.version and image.tag.platforms"
                ),
            })?;
        Ok(ModuleJson {
            dir: module_dir.to_path_buf(),
            repository: raw.image.repository,
            version: raw.image.tag.version.unwrap_or_else(|| "0.0.0".into()),
            platforms: raw.image.tag.platforms,
            build_options: raw.image.build_options,
            context_path: raw.image.context_path.unwrap_or_else(|| ".".into()),
            description: raw.description,
        })
    }

    /// The image tag for `platform`: `<repository lowercased>:<version>[-<container_tag>]-<platform>`.
    pub fn image_tag(&self, platform: &str, container_tag: &str) -> String {
        let extra = if container_tag.is_empty() {
            String::new()
        } else {
            format!("-{container_tag}")
        };
        format!(
            "{}:{}{}-{}",
            self.repository.to_lowercase(),
            self.version,
            extra,
            platform
        )
    }

    /// The Dockerfile of `platform`, joined to the module folder.
    pub fn dockerfile(&self, platform: &str) -> Option<PathBuf> {
        self.platforms.get(platform).map(|p| self.dir.join(p))
    }

    /// `buildOptions` as `docker build` arguments: iotedgedev takes each entry as one option, its value
    /// after the first space or `=` (`"--build-arg MODULE=x"`), so each entry is split at its first run
    /// of whitespace.
    pub fn docker_build_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for option in &self.build_options {
            let option = option.trim();
            match option.split_once(char::is_whitespace) {
                Some((key, value)) => {
                    out.push(key.to_owned());
                    out.push(value.trim_start().to_owned());
                }
                None if !option.is_empty() => out.push(option.to_owned()),
                None => {}
            }
        }
        out
    }

    /// The docker build context, joined to the module folder.
    pub fn context_dir(&self) -> PathBuf {
        self.dir.join(&self.context_path)
    }
}

/// Adds the placeholders of one module folder, as iotedgedev's `_update_module_maps`.
fn add_placeholders(
    map: &mut BTreeMap<String, String>,
    base: &str,
    module: &ModuleJson,
    platform: &str,
    container_tag: &str,
) {
    for p in module.platforms.keys() {
        let tag = module.image_tag(p, container_tag);
        map.insert(format!("${{{base}.{p}}}"), tag.clone());
        if p == platform {
            map.insert(format!("${{{base}}}"), tag.clone());
        } else if *p == format!("{platform}.debug") {
            map.insert(format!("${{{base}.debug}}"), tag.clone());
        }
        map.insert(tag.clone(), tag);
    }
}

/// Folders of `modules_dir` that hold a `module.json`, in name order.
fn module_folders(modules_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(modules_dir) {
        for e in entries.flatten() {
            if e.path().join("module.json").is_file() {
                if let Some(name) = e.file_name().to_str() {
                    out.push(name.to_owned());
                }
            }
        }
    }
    out.sort();
    out
}

/// The `modulesContent.$edgeAgent.properties.desired.modules` object of a document, if any.
fn user_modules(doc: &Value) -> Option<&serde_json::Map<String, Value>> {
    let content = if doc.get("modulesContent").is_some() {
        "modulesContent"
    } else {
        "moduleContent"
    };
    doc.get(content)?
        .get("$edgeAgent")?
        .get("properties.desired")?
        .get("modules")?
        .as_object()
}

/// Expands a `deployment.template.json` text: variables, then image placeholders (see the module
/// documentation). Returns the expanded template as JSON text in the template's key order, written as
/// Python's `json.dump(indent=2)` writes it (createOptions still objects).
pub fn expand_template(
    template_text: &str,
    ctx: &TemplateContext,
) -> Result<String, ManifestError> {
    expand_template_in(template_text, ctx, &ctx.default_template_dir())
}

fn expand_template_in(
    template_text: &str,
    ctx: &TemplateContext,
    template_dir: &Path,
) -> Result<String, ManifestError> {
    let expanded = expand_vars(template_text, &ctx.vars);
    let doc: Value = serde_json::from_str(&expanded).map_err(|source| ManifestError::Json {
        what:
            "the template after `$VAR` expansion (a variable's value with `\"` or `\\` breaks it)"
                .into(),
        source,
    })?;
    let container_tag = ctx
        .vars
        .get("CONTAINER_TAG")
        .map(String::as_str)
        .unwrap_or("");

    let mut map = BTreeMap::new();
    for folder in module_folders(&ctx.modules_dir) {
        let module = ModuleJson::load(&ctx.modules_dir.join(&folder), &ctx.vars)?;
        add_placeholders(
            &mut map,
            &format!("MODULES.{folder}"),
            &module,
            &ctx.platform,
            container_tag,
        );
    }

    let Some(modules) = user_modules(&doc) else {
        return Ok(ordered_text(&expanded)?.to_pretty());
    };
    // `${MODULEDIR<path>...}` placeholders name their folder themselves.
    for spec in modules.values() {
        let image = spec
            .get("settings")
            .and_then(|s| s.get("image"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(rest) = image.strip_prefix("${MODULEDIR<") {
            if let Some((dir, _)) = rest.split_once('>') {
                let module = ModuleJson::load(&template_dir.join(dir), &ctx.vars)?;
                add_placeholders(
                    &mut map,
                    &format!("MODULEDIR<{dir}>"),
                    &module,
                    &ctx.platform,
                    container_tag,
                );
            }
        }
    }
    let mut replacements = Vec::new();
    for (name, spec) in modules.iter() {
        let Some(image) = spec
            .get("settings")
            .and_then(|s| s.get("image"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        if let Some(tag) = map.get(image) {
            replacements.push((name.clone(), tag.clone()));
        } else if image.starts_with("${MODULES.") || image.starts_with("${MODULEDIR<") {
            return Err(placeholder_error(name, image, ctx, template_dir));
        }
    }
    // The output keeps the template's key order (as iotedgedev's does), so edit the ordered tree.
    let mut node = ordered_text(&expanded)?;
    let content = if node.get("modulesContent").is_some() {
        "modulesContent"
    } else {
        "moduleContent"
    };
    for (name, tag) in replacements {
        let path = [
            content,
            "$edgeAgent",
            "properties.desired",
            "modules",
            name.as_str(),
            "settings",
        ];
        if let Some(settings) = node.path_mut(&path) {
            settings.set("image", Node::Str(tag));
        }
    }
    Ok(node.to_pretty())
}

fn ordered_text(text: &str) -> Result<Node, ManifestError> {
    Node::parse(text).map_err(|problem| ManifestError::Structure {
        path: "the expanded template".into(),
        problem: format!("not readable in order ({problem})"),
    })
}

fn placeholder_error(
    module: &str,
    image: &str,
    ctx: &TemplateContext,
    template_dir: &Path,
) -> ManifestError {
    let inner = image
        .trim_start_matches("${")
        .trim_end_matches('}')
        .to_owned();
    let (dir, platform) = if let Some(rest) = inner.strip_prefix("MODULEDIR<") {
        let (path, after) = rest.split_once('>').unwrap_or((rest, ""));
        let platform = after.strip_prefix('.').unwrap_or(&ctx.platform).to_owned();
        (template_dir.join(path), platform)
    } else {
        let rest = inner.strip_prefix("MODULES.").unwrap_or(&inner);
        if ctx.modules_dir.join(rest).join("module.json").is_file() {
            (ctx.modules_dir.join(rest), ctx.platform.clone())
        } else {
            match rest.split_once('.') {
                Some((folder, platform)) => (ctx.modules_dir.join(folder), platform.to_owned()),
                None => (ctx.modules_dir.join(rest), ctx.platform.clone()),
            }
        }
    };
    let platform = if platform == "debug" {
        format!("{}.debug", ctx.platform)
    } else {
        platform
    };
    match ModuleJson::load(&dir, &ctx.vars) {
        Ok(m) => ManifestError::PlatformMissing {
            module: module.to_owned(),
            placeholder: image.to_owned(),
            module_json: dir.join("module.json"),
            platform,
            available: m.platforms.keys().cloned().collect::<Vec<_>>().join(", "),
        },
        Err(_) => ManifestError::UnknownModuleFolder {
            module: module.to_owned(),
            placeholder: image.to_owned(),
            modules_dir: ctx.modules_dir.clone(),
        },
    }
}

/// Which `modules/<folder>` builds `image`: the folder of a `${MODULES.<folder>}` or
/// `${MODULES.<folder>.<platform>}` placeholder (when it has a module.json), or, for an expanded
/// `<repository>:<version>[-<tag>]-<platform>`, the folder whose module.json has that repository (the
/// registry part compared only once the environment has expanded it), version and platform.
pub fn module_folder_for_image(modules_dir: &Path, image: &str) -> Option<String> {
    let has_module = |folder: &str| {
        !folder.is_empty()
            && !folder.contains('/')
            && modules_dir.join(folder).join("module.json").is_file()
    };
    if let Some(inner) = image
        .strip_prefix("${MODULES.")
        .and_then(|r| r.strip_suffix('}'))
    {
        if has_module(inner) {
            return Some(inner.to_owned());
        }
        let (folder, _) = inner.split_once('.')?;
        return has_module(folder).then(|| folder.to_owned());
    }
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let (repo, tag) = image.rsplit_once(':')?;
    if repo.contains('@') || tag.contains('/') {
        return None;
    }
    let repo_name = repo.rsplit('/').next().unwrap_or(repo);
    for folder in module_folders(modules_dir) {
        let Ok(m) = ModuleJson::load(&modules_dir.join(&folder), &vars) else {
            continue;
        };
        let want_repo = m.repository.to_lowercase();
        let repo_matches = if want_repo.contains('$') {
            want_repo.rsplit('/').next().unwrap_or(&want_repo) == repo_name
        } else {
            want_repo == repo
        };
        if !repo_matches {
            continue;
        }
        let Some(rest) = tag.strip_prefix(m.version.as_str()) else {
            continue;
        };
        // `-<platform>`, or `-<CONTAINER_TAG>-<platform>`.
        if rest.starts_with('-') && m.platforms.keys().any(|p| rest.ends_with(&format!("-{p}"))) {
            return Some(folder);
        }
    }
    None
}

/// `iotedgedev solution genconfig -f <template> -P <platform>`: expands the template with `env` (see
/// [`merge_env`]; `MODULES_PATH` there names the modules folder relative to the template, default
/// `modules`), validates it, converts createOptions and writes `<out_dir>/deployment.<platform>.json`
/// (the name follows iotedgedev: `<template name without .template.json>.<platform>.json`, no platform
/// when `$schema-template` is missing or `0.0.1`, `DEPLOYMENT_CONFIG_FILE` in `env` overrides it).
/// Returns the path written. Fails with [`ManifestError::Invalid`] listing the errors when validation
/// finds any; warnings do not stop it (load the result and call [`Manifest::validate`] to see them).
pub fn genconfig(
    template: &Path,
    platform: &str,
    out_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, ManifestError> {
    let text = std::fs::read_to_string(template).map_err(|source| ManifestError::Read {
        path: template.to_path_buf(),
        source,
    })?;
    let template_dir = template
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let modules_dir = template_dir.join(
        env.get("MODULES_PATH")
            .map(String::as_str)
            .unwrap_or("modules"),
    );
    let ctx = TemplateContext {
        platform: platform.to_owned(),
        modules_dir,
        vars: env.clone(),
    };
    let expanded = expand_template_in(&text, &ctx, &template_dir)?;
    let manifest = Manifest::from_json_str(&expanded)?;
    if let Err(problems) = manifest.validate() {
        let errors: Vec<ManifestError> = problems.into_iter().filter(|p| !p.is_warning()).collect();
        if !errors.is_empty() {
            return Err(ManifestError::Invalid { problems: errors });
        }
    }
    let name = match env.get("DEPLOYMENT_CONFIG_FILE") {
        Some(name) if !name.is_empty() => name.clone(),
        _ => deployment_file_name(template, manifest.schema_template().unwrap_or(""), platform),
    };
    std::fs::create_dir_all(out_dir).map_err(|source| ManifestError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let out = out_dir.join(name);
    // iotedgedev's output: the template's order, `$schema-template` gone, createOptions as chunked strings,
    // `json.dump(indent=2)` without a final newline.
    let mut node = ordered_text(&expanded)?;
    node.remove("$schema-template");
    crate::ordered::convert_create_options(&mut node);
    std::fs::write(&out, node.to_pretty()).map_err(|source| ManifestError::Write {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// iotedgedev's `get_deployment_manifest_name`.
fn deployment_file_name(template: &Path, schema_template: &str, platform: &str) -> String {
    // Python compares the version strings as text.
    let suffix = if schema_template > "0.0.1" {
        format!(".{platform}")
    } else {
        String::new()
    };
    let base = template.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let prefix = base
        .strip_suffix(".template.json")
        .or_else(|| base.strip_suffix(".json"))
        .unwrap_or("deployment");
    format!("{prefix}{suffix}.json")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expandvars_matches_python() {
        // python3 -c 'import os; os.environ.clear(); os.environ.update(A="1", B_2="two", upstream="UP");
        //   print(os.path.expandvars("$A ${B_2} $C ${C} $ ${ $A$A $A.x ${MODULES.x} $upstream é$A ${A}b $Ab"))'
        let v = vars(&[("A", "1"), ("B_2", "two"), ("upstream", "UP")]);
        assert_eq!(
            expand_vars(
                "$A ${B_2} $C ${C} $ ${ $A$A $A.x ${MODULES.x} $upstream é$A ${A}b $Ab",
                &v
            ),
            "1 two $C ${C} $ ${ $A$A $A.x ${MODULES.x} UP é1 1b $Ab"
        );
        // python3 -c 'import os; os.environ.clear(); os.environ.update(A="1"); print(os.path.expandvars("$A$A $A.x ${A}${A"))'
        assert_eq!(expand_vars("$A$A $A.x ${A}${A", &v), "11 1.x 1${A");
        let none = BTreeMap::new();
        let route = "FROM /messages/modules/A/* INTO $upstream";
        assert_eq!(expand_vars(route, &none), route);
        assert_eq!(
            expand_vars(
                "$edgeAgent $edgeHub $schema-template $version $body.temp",
                &none
            ),
            "$edgeAgent $edgeHub $schema-template $version $body.temp"
        );
        // A value is not scanned again.
        assert_eq!(expand_vars("$A", &vars(&[("A", "$B"), ("B", "x")])), "$B");
    }

    #[test]
    fn deployment_file_names_follow_iotedgedev() {
        let t = Path::new("/x/deployment.template.json");
        assert_eq!(
            deployment_file_name(t, "4.0.0", "arm32v7"),
            "deployment.arm32v7.json"
        );
        assert_eq!(deployment_file_name(t, "", "amd64"), "deployment.json");
        assert_eq!(deployment_file_name(t, "0.0.1", "amd64"), "deployment.json");
        assert_eq!(
            deployment_file_name(
                Path::new("deployment.debug.template.json"),
                "4.0.0",
                "amd64"
            ),
            "deployment.debug.amd64.json"
        );
        assert_eq!(
            deployment_file_name(Path::new("layer.json"), "4.0.0", "amd64"),
            "layer.amd64.json"
        );
    }

    #[test]
    fn merge_env_lets_the_process_win() {
        let merged = merge_env(
            vars(&[("A", "dotenv"), ("B", "dotenv")]),
            vec![("A".to_string(), "process".to_string())],
        );
        assert_eq!(merged["A"], "process");
        assert_eq!(merged["B"], "dotenv");
    }
}
