//! Azure IoT Edge deployment manifests: the model, `deployment.template.json` expansion as iotedgedev
//! does it, validation with messages a user can act on, and genconfig.
//!
//! Parts:
//! - [`model`]: [`Manifest`] (`modulesContent.$edgeAgent`, `$edgeHub`, module twins) with typed
//!   [`ModuleSpec`]s and [`RouteSpec`]s; parsing is tolerant and records problems for `validate`.
//! - [`validate`](Manifest::validate): every problem at once: routes that do not parse or name missing
//!   modules, createOptions that are not JSON or too big, unknown status/restartPolicy, missing images,
//!   `:latest` tags and unexpanded `$VAR`s (warnings, see [`ManifestError::is_warning`]), names that clash
//!   without case, route priorities outside 0..=9.
//! - [`create_options`]: createOptions as objects or (chunked) strings, converted as iotedgedev does.
//! - [`template`]: `$VAR` and `${MODULES.<folder>}` expansion from `.env`, the environment and each
//!   `modules/<folder>/module.json`; [`genconfig`] writes `config/deployment.<platform>.json`, byte for
//!   byte what `iotedgedev solution genconfig` 3.3 writes (a test compares them when iotedgedev is
//!   installed). Note: like iotedgedev's `os.path.expandvars`, expansion rewrites `$upstream`,
//!   `$edgeAgent`, `$edgeHub`, `$schema-template` or `$body.x` if a variable named `upstream`, `edgeAgent`,
//!   `edgeHub`, `schema` or `body` is set; unset names are left exactly as written.
//! - `ordered` (private): JSON that keeps key order, written as Python's `json` writes it.
//! - [`dotenv`]: `.env` files as python-dotenv reads them.
//! - [`error`]: the error type, [`ManifestError`].
//!
//! A manifest document is kept as JSON and viewed through typed accessors; [`Manifest::to_deployment_json`]
//! changes only createOptions and `$schema-template`, so fields this crate does not know survive.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use edge_manifest::Manifest;
//! let manifest = Manifest::load(std::path::Path::new("deployment.template.json"))?;
//! if let Err(problems) = manifest.validate() {
//!     for p in &problems {
//!         eprintln!("{p}");
//!     }
//!     if problems.iter().any(|p| !p.is_warning()) {
//!         return Err("the deployment has errors".into());
//!     }
//! }
//! for (name, module) in manifest.modules() {
//!     let folder = edge_manifest::module_folder_for_image(std::path::Path::new("modules"), &module.image);
//!     println!("{name}: {:?} from modules/{folder:?}, env {:?}", module.status, module.env);
//! }
//! let routes = manifest.routes()?; // edge_routes::Route, with priority and time-to-live
//! # let _ = routes;
//! # Ok(())
//! # }
//! ```

pub mod create_options;
mod deploy;
pub mod dotenv;
pub mod error;
pub mod model;
mod ordered;
pub mod template;
mod validate;

pub use dotenv::load_dotenv;
pub use error::{ManifestError, RouteEnd};
pub use model::{
    ImagePullPolicy, Manifest, ModuleSpec, ModuleStatus, RegistryCredential, RestartPolicy,
    RouteSpec, RuntimeSpec, DEFAULT_STORE_AND_FORWARD_TTL_SECS,
};
pub use template::{
    expand_template, expand_vars, genconfig, merge_env, module_folder_for_image, ModuleJson,
    TemplateContext,
};
