//! `edge-dev up`: the whole local runtime. It reads the deployment (a `deployment.template.json` is
//! expanded first, like `iotedgedev genconfig`), validates it, starts the hub (TLS, durable queues, routes,
//! twins), the workload API, the upstream sink and dashboard, the control API and the supervisor, one
//! step each, and on shutdown (or when a step fails) stops what started in the reverse order, which
//! loses nothing: modules first (so they can flush to the hub), then the control API, the sink, the
//! dashboard, the workload API, and the hub last ([`Started`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use edge_manifest::{Manifest, ModuleStatus as DesiredStatus};
use tokio::sync::watch;

use crate::identities::Identities;
use crate::supervisor::{self, Backoff, ModuleProcess, StatusMap};
use crate::{dashboard, upstream, workload, EdgeDevError};
use edge_hub::pki::DevPki;
use edge_hub::{Hub, HubConfig, HubHandle, HubListeners, ModuleIdentity};

/// The edgeHub API version edgeAgent sets in `IOTEDGE_APIVERSION`.
pub const WORKLOAD_API_VERSION: &str = "2019-01-30";

/// Options of `edge-dev up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The deployment: a template (`${MODULES.x}` placeholders are expanded for `platform`) or a generated
    /// `config/deployment.<platform>.json`.
    pub manifest: PathBuf,
    /// Platform used to expand a template. Default `amd64`.
    pub platform: String,
    /// Folder of the module folders (`<folder>/module.json`). Default: `modules` beside the manifest.
    pub modules_dir: Option<PathBuf>,
    /// Folder for certificates, keys, the hub's store and the modules' working folders. Default `.edge-dev`.
    pub data_dir: PathBuf,
    /// Append every upstream message to this file as a JSON line.
    pub upstream_log: Option<PathBuf>,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Modules that are not started: they are run by hand (see `edge-dev module-cred`).
    pub external: Vec<String>,
    /// Where the hub listens for MQTT over TLS. Default 127.0.0.1:8883 (edgeHub's port; the Azure SDKs
    /// cannot use another).
    pub hub_listen: SocketAddr,
    /// Optional plain-TCP MQTT listener for local tools.
    pub plain_listen: Option<SocketAddr>,
    /// Folder that holds the module binaries. Default: the folder of the `edge-dev` binary.
    pub bin_dir: PathBuf,
    /// Forward upstream messages to a real IoT Hub as this device.
    pub iothub_connection_string: Option<String>,
    /// The host name modules use for the hub (`IOTEDGE_GATEWAYHOSTNAME`, SAN of the server certificate).
    pub gateway_hostname: String,
    /// Print one line per upstream message on standard output.
    pub console: bool,
    /// Play a lost internet connection: messages for `$upstream` are stored (store and forward) but not
    /// delivered until edge-dev runs again without it.
    pub offline: bool,
    /// Where the control API listens (`edge-dev send`, `twin`, `invoke`, `upstream`, `monitor`);
    /// `None`: not served. Default 127.0.0.1:53000 (iotedgehubdev's port).
    pub api: Option<SocketAddr>,
    /// Run the hub for this one module, run by hand, without a deployment: its outputs go `$upstream`,
    /// and its inputs are fed through the API (`edge-dev send`). `manifest` is not read.
    pub single_module: Option<String>,
    /// Restart back-off of the supervisor.
    pub backoff: Backoff,
    /// Where the dashboard (web page, JSON API, `/metrics`) listens; `None`: no dashboard. Default
    /// 127.0.0.1:8080 ([`crate::dashboard::DEFAULT_ADDR`]); port 0 picks a free port.
    pub dashboard: Option<SocketAddr>,
    /// The dashboard's token (see [`crate::dashboard::DashboardOptions::token`]); required when
    /// `dashboard` is not a loopback address.
    pub dashboard_token: Option<String>,
    /// Run the modules as containers from their images (`--docker`, see [`crate::docker`]) instead of as
    /// local processes. `None`: processes.
    pub docker: Option<crate::docker::DockerOptions>,
}

/// Loads the deployment at `path`: a template is expanded with `.env` (beside it) and the environment.
pub fn load_manifest(
    path: &Path,
    platform: &str,
    modules_dir: &Path,
) -> Result<Manifest, EdgeDevError> {
    let text = std::fs::read_to_string(path).map_err(|e| EdgeDevError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let is_template = text.contains("$schema-template") || text.contains("${MODULES.");
    let manifest = if is_template {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let ctx = template_context(dir, modules_dir, platform)?;
        let expanded = edge_manifest::expand_template(&text, &ctx)?;
        Manifest::from_json_str(&expanded)?
    } else {
        Manifest::from_json_str(&text)?
    };
    if let Err(problems) = manifest.validate() {
        let (warnings, errors): (Vec<_>, Vec<_>) = problems.iter().partition(|e| e.is_warning());
        for w in warnings {
            tracing::warn!("{}: {w}", path.display());
        }
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
            return Err(EdgeDevError::Config(format!(
                "the deployment {} is not valid:\n{}",
                path.display(),
                list.join("\n")
            )));
        }
    }
    Ok(manifest)
}

/// The variables a template is expanded with: `.env` beside it (in `dir`), then the process environment.
pub fn template_context(
    dir: &Path,
    modules_dir: &Path,
    platform: &str,
) -> Result<edge_manifest::TemplateContext, EdgeDevError> {
    let mut vars = BTreeMap::new();
    let dotenv = dir.join(".env");
    if dotenv.exists() {
        vars.extend(edge_manifest::load_dotenv(&dotenv)?);
    }
    vars.extend(std::env::vars());
    Ok(edge_manifest::TemplateContext {
        platform: platform.to_string(),
        modules_dir: modules_dir.to_path_buf(),
        vars,
    })
}

/// The deployment of `--single-module NAME`: that one module (run by hand, so its image is never used),
/// its outputs routed `$upstream`, an empty module twin. Its inputs are fed through the control API.
pub fn single_module_manifest(name: &str) -> Result<Manifest, EdgeDevError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        && !name.starts_with('$');
    if !valid {
        return Err(EdgeDevError::Config(format!(
            "--single-module {name:?}: a module name is 1-64 letters, digits, '-' or '_'"
        )));
    }
    let doc = serde_json::json!({
        "modulesContent": {
            "$edgeAgent": {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
                    "systemModules": {
                        "edgeAgent": {"type": "docker", "settings": {
                            "image": "mcr.microsoft.com/azureiotedge-agent:1.6", "createOptions": "{}"}},
                        "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.6", "createOptions": "{}"}}
                    },
                    "modules": {
                        name: {"version": "1.0", "type": "docker", "status": "running",
                            "restartPolicy": "always",
                            "settings": {"image": format!("localhost/{}:0.0.1", name.to_ascii_lowercase()), "createOptions": "{}"}}
                    }
                }
            },
            "$edgeHub": {
                "properties.desired": {
                    "schemaVersion": "1.2",
                    "routes": {"toUpstream": format!("FROM /messages/modules/{name}/outputs/* INTO $upstream")},
                    "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
                }
            },
            name: {"properties.desired": {}}
        }
    });
    let manifest = Manifest::from_json_str(&doc.to_string())?;
    if let Err(problems) = manifest.validate() {
        let errors: Vec<String> = problems
            .iter()
            .filter(|e| !e.is_warning())
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            return Err(EdgeDevError::Config(format!(
                "--single-module {name}: {}",
                errors.join("; ")
            )));
        }
    }
    Ok(manifest)
}

/// Runs the local edge runtime until `shutdown` resolves (or `duration` passes).
pub async fn up(opts: UpOptions, shutdown: impl Future<Output = ()>) -> Result<(), EdgeDevError> {
    let setup = Setup::new(opts)?;
    let mut started = Started::default();
    let docker_failed = match start(&setup, &mut started).await {
        Ok(failed) => failed,
        Err(e) => {
            // what did start stops again, in order, before the error is returned
            started.stop().await;
            return Err(e);
        }
    };
    let mut failed_rx = docker_failed.clone();
    let docker_failure = async move {
        // Err: the sender is gone (process mode, or docker mode that ended well): never a reason to
        // stop. (Waiting here, not in a select! handler, keeps `shutdown` polled.)
        if failed_rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = docker_failure => {}
        }
    };
    match setup.opts.duration {
        Some(d) => {
            tokio::select! {
                _ = shutdown => {}
                _ = tokio::time::sleep(d) => tracing::info!("--duration reached"),
            }
        }
        None => shutdown.await,
    }
    tracing::info!("stopping: modules first, then the upstream sink, then the hub");
    started.stop().await;
    println!("edge-dev: stopped");
    let failed = docker_failed.borrow().clone();
    match failed {
        Some(e) => Err(EdgeDevError::Config(format!("--docker: {e}"))),
        None => Ok(()),
    }
}

/// What `up` works from: the options, the deployment, the data folder, identities and the CA.
struct Setup {
    opts: UpOptions,
    modules_dir: PathBuf,
    manifest: Manifest,
    data_dir: PathBuf,
    /// The deployment's modules.
    names: Vec<String>,
    ids: Identities,
    pki: DevPki,
}

impl Setup {
    fn new(mut opts: UpOptions) -> Result<Setup, EdgeDevError> {
        let modules_dir = opts
            .modules_dir
            .clone()
            .unwrap_or_else(|| default_modules_dir(&opts.manifest));
        let manifest = match &opts.single_module {
            Some(name) => {
                // the module is run by hand: never started here
                if !opts.external.contains(name) {
                    opts.external.push(name.clone());
                }
                single_module_manifest(name)?
            }
            None => load_manifest(&opts.manifest, &opts.platform, &modules_dir)?,
        };
        let data_dir = absolute(&opts.data_dir)?;
        std::fs::create_dir_all(&data_dir).map_err(|e| EdgeDevError::Io {
            path: data_dir.clone(),
            source: e,
        })?;
        for name in &opts.external {
            if !manifest.modules().any(|(m, _)| m == name) {
                return Err(EdgeDevError::Config(format!(
                    "--external {name}: the deployment has no module {name}; add it to modulesContent.$edgeAgent so routes and its twin exist"
                )));
            }
        }
        let names: Vec<String> = manifest.modules().map(|(n, _)| n.to_string()).collect();
        let ids = Identities::load_or_create(&data_dir, names.iter().map(String::as_str))?;
        let pki = DevPki::load_or_create(
            &data_dir.join("certs"),
            &[opts.gateway_hostname.as_str(), "localhost", "edgeHub"],
        )?;
        Ok(Setup {
            opts,
            modules_dir,
            manifest,
            data_dir,
            names,
            ids,
            pki,
        })
    }

    fn workload_socket(&self) -> PathBuf {
        self.data_dir.join("workload.sock")
    }

    /// Where the supervisor records the module processes it runs (their pid files).
    fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
}

/// What `up` has started, stopped in the reverse order of starting: the modules first (so that they
/// can flush to the hub), then the control API, the upstream sink, the dashboard, the workload API,
/// and the hub last. Dropping it without [`Started::stop`] stops every part at once.
#[derive(Default)]
struct Started {
    parts: Vec<Part>,
}

struct Part {
    what: &'static str,
    stop: watch::Sender<bool>,
    /// Resolves once the part has stopped (and cleaned up after itself).
    done: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Started {
    /// A part that starts stopping when the flag it watches ([`Started::flag`]) turns true, and has
    /// stopped when `done` resolves.
    fn add(
        &mut self,
        what: &'static str,
        stop: watch::Sender<bool>,
        done: impl Future<Output = ()> + Send + 'static,
    ) {
        self.parts.push(Part {
            what,
            stop,
            done: Box::pin(done),
        });
    }

    /// A stop flag for the next part: the sender for [`Started::add`], the future the part stops on.
    fn flag() -> (
        watch::Sender<bool>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = watch::channel(false);
        (tx, wait_true(rx))
    }

    async fn stop(self) {
        for p in self.parts.into_iter().rev() {
            tracing::debug!(part = p.what, "stopping");
            let _ = p.stop.send(true);
            p.done.await;
        }
    }
}

/// Starts every part, in order, into `started`. The answer: where the `--docker` supervisor reports a
/// module container it could not start (which stops the runtime).
async fn start(
    setup: &Setup,
    started: &mut Started,
) -> Result<watch::Receiver<Option<String>>, EdgeDevError> {
    // --docker: the network first, so that the hub can listen on its gateway (the containers' `edgeHub`).
    let docker_net = match &setup.opts.docker {
        Some(d) => Some(crate::docker::prepare(d).await?),
        None => None,
    };
    let (hub, hub_addr) = start_hub(setup, docker_net.as_ref(), started).await?;
    stop_strays(setup).await;
    start_workload(setup, started)?;
    let status: StatusMap = Arc::default();
    let online = start_upstream(setup, &hub, &status, started).await?;
    if let Some(addr) = setup.opts.api {
        start_api(setup, addr, &hub, online, started).await?;
    }
    let (processes, containers) = module_specs(setup, hub_addr.port(), docker_net.is_some())?;
    println!(
        "edge-dev: hub on {hub_addr} (MQTT over TLS; CA {}), workload API {}, {} module(s) started{}",
        setup.pki.ca_path.display(),
        setup.workload_socket().display(),
        processes.len() + containers.len(),
        match &setup.opts.upstream_log {
            Some(p) => format!(", upstream log {}", p.display()),
            None => String::new(),
        }
    );
    let (stop, stopped) = watch::channel(false);
    // --docker: a module container that cannot be started stops the runtime, which then returns the error.
    let (docker_failed_tx, docker_failed) = watch::channel(None::<String>);
    let sup = match (&setup.opts.docker, docker_net) {
        (Some(d), Some(net)) => {
            let run = crate::docker::supervise(
                d.clone(),
                net,
                setup.workload_socket(),
                containers,
                status.clone(),
                stopped,
            );
            tokio::spawn(async move {
                if let Err(e) = run.await {
                    tracing::error!("--docker: {e}");
                    let _ = docker_failed_tx.send(Some(e.to_string()));
                }
            })
        }
        _ => tokio::spawn(supervisor::supervise(
            processes,
            setup.opts.backoff,
            status.clone(),
            stopped,
        )),
    };
    started.add("modules", stop, async move {
        let _ = sup.await;
    });
    Ok(docker_failed)
}

/// The hub, on `--hub-listen` (or the docker network's gateway); its address.
async fn start_hub(
    setup: &Setup,
    docker_net: Option<&crate::docker::DockerNetwork>,
    started: &mut Started,
) -> Result<(HubHandle, SocketAddr), EdgeDevError> {
    let (manifest, ids) = (&setup.manifest, &setup.ids);
    let routes = edge_routes::RouteTable::new(manifest.routes()?)
        .map_err(|e| EdgeDevError::Config(format!("routes: {e}")))?;
    let mut desired = BTreeMap::new();
    for n in &setup.names {
        if let Some(d) = manifest.module_twin_desired(n) {
            desired.insert(n.clone(), d.clone());
        }
    }
    let mut modules = Vec::new();
    for (n, c) in &ids.modules {
        if setup.names.contains(n) {
            modules.push(ModuleIdentity {
                module_id: n.clone(),
                primary_key: c.key_bytes()?,
            });
        }
    }
    let opts = &setup.opts;
    let hub_listen = docker_net.map_or(opts.hub_listen, |n| {
        crate::docker::hub_listen(opts.hub_listen, n)
    });
    let tls = tokio::net::TcpListener::bind(hub_listen).await.map_err(|e| {
        EdgeDevError::Config(format!(
            "cannot listen on {} for the hub ({e}); is another edge-dev or edgeHub running? Use --hub-listen to pick another address",
            hub_listen
        ))
    })?;
    let hub_addr = tls
        .local_addr()
        .map_err(|e| EdgeDevError::Upstream(e.to_string()))?;
    let plain = match opts.plain_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
            EdgeDevError::Config(format!("cannot listen on {a} for plain MQTT ({e}); use --plain-listen to pick another address"))
        })?),
        None => None,
    };
    let hub_config = HubConfig {
        iothub_hostname: ids.iothub_hostname.clone(),
        device_id: ids.device_id.clone(),
        data_dir: setup.data_dir.join("hub"),
        store_and_forward_ttl_secs: manifest.store_and_forward_ttl_secs(),
        ..HubConfig::default()
    };
    let (stop, stopped) = Started::flag();
    let hub = Hub::start(
        hub_config,
        modules,
        routes,
        desired,
        HubListeners {
            tls: Some((tls, setup.pki.server_config())),
            plain,
        },
        stopped,
    )
    .await?;
    let closed = hub.clone();
    started.add("hub", stop, async move { closed.closed().await });
    Ok((hub, hub_addr))
}

/// The hub holds the store's lock now, so no other edge-dev runs on this data folder: module processes
/// recorded under it belong to an earlier run that was killed. Stops them before new ones start.
async fn stop_strays(setup: &Setup) {
    let dir = setup.run_dir();
    let strays = tokio::task::spawn_blocking(move || supervisor::stop_strays(&dir))
        .await
        .unwrap_or_default();
    if !strays.is_empty() {
        tracing::warn!(modules = ?strays, "stopped module processes an earlier edge-dev left running");
    }
}

/// The workload API on its unix socket (removed again when it stops).
fn start_workload(setup: &Setup, started: &mut Started) -> Result<(), EdgeDevError> {
    let socket = setup.workload_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| EdgeDevError::Io {
        path: socket.clone(),
        source: e,
    })?;
    let key_ids = setup.ids.clone();
    let keys: workload::KeyLookup = Arc::new(move |module: &str, genid: &str| {
        let c = key_ids.modules.get(module)?;
        if c.generation_id != genid {
            return None;
        }
        c.key_bytes().ok()
    });
    let (stop, stopped) = Started::flag();
    let task = tokio::spawn(workload::serve(
        listener,
        keys,
        setup.pki.ca_cert_pem.clone(),
        stopped,
    ));
    started.add("workload API", stop, async move {
        let _ = task.await;
        let _ = std::fs::remove_file(&socket);
    });
    Ok(())
}

/// The upstream sink (log, console, optional IoT Hub) and the dashboard that shows what it sends;
/// the answer is the upstream link's switch: `--offline` starts it off, the API turns it at run time.
async fn start_upstream(
    setup: &Setup,
    hub: &HubHandle,
    status: &StatusMap,
    started: &mut Started,
) -> Result<Arc<watch::Sender<bool>>, EdgeDevError> {
    let opts = &setup.opts;
    let forward = match &opts.iothub_connection_string {
        Some(cs) => {
            let identity = edge_client::Identity::from_connection_string(cs, None)
                .map_err(|e| EdgeDevError::Config(format!("--iothub-connection-string: {e}")))?;
            let (client, _events) =
                edge_client::ModuleClient::connect(identity, edge_client::ClientOptions::default())
                    .await
                    .map_err(|e| {
                        EdgeDevError::Upstream(format!("cannot connect to IoT Hub: {e}"))
                    })?;
            Some(client)
        }
        None => None,
    };
    let mut sink =
        upstream::UpstreamSink::new(opts.upstream_log.as_deref(), forward, opts.console)?;
    let (tap, _) = tokio::sync::broadcast::channel(1024);
    let dashboard = match opts.dashboard {
        Some(addr) => {
            dashboard::check_exposure(addr, opts.dashboard_token.as_deref())?;
            let module_metrics = dashboard::scrape::urls_from_env(
                setup.manifest.modules().map(|(n, s)| (n, &s.env)),
            );
            let (stop, stopped) = Started::flag();
            let (task, dash) = start_dashboard(
                addr,
                opts,
                hub,
                &setup.ids.device_id,
                module_metrics,
                status,
                &tap,
                stopped,
            )
            .await?;
            started.add("dashboard", stop, async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            });
            Some(dash)
        }
        None => None,
    };
    sink.tap = Some(tap);
    let (link_tx, link_rx) = watch::channel(None);
    sink.link = Some(link_tx);
    let (online_tx, online_rx) = watch::channel(!opts.offline);
    if opts.offline {
        tracing::warn!("--offline: upstream messages are kept in the store-and-forward queue and not delivered (`edge-dev upstream online` delivers them)");
    }
    if let Some(dash) = &dashboard {
        dash.watch_link(link_rx);
        dash.watch_online(online_rx.clone());
    }
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(upstream::run(hub.upstream(), sink, stopped, online_rx));
    started.add("upstream sink", stop, async move {
        let _ = task.await;
    });
    Ok(Arc::new(online_tx))
}

/// The control API on `addr`; its URL is written to the data folder for the CLI commands (and
/// removed when it stops).
async fn start_api(
    setup: &Setup,
    addr: SocketAddr,
    hub: &HubHandle,
    online: Arc<watch::Sender<bool>>,
    started: &mut Started,
) -> Result<(), EdgeDevError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        EdgeDevError::Config(format!("cannot listen on {addr} for the control API ({e}); use --api ADDR to pick another address or --no-api"))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| EdgeDevError::Config(format!("control API: {e}")))?;
    let url = format!("http://{bound}");
    println!("edge-dev: control API {url} (edge-dev send / twin / invoke / upstream / monitor)");
    let url_file = crate::api::url_file(&setup.data_dir);
    if let Err(e) = std::fs::write(&url_file, &url) {
        tracing::warn!(file = %url_file.display(), error = %e, "cannot record the control API's address; the CLI commands need --api-url");
    }
    let names = &setup.names;
    let state = crate::api::ApiState {
        hub: hub.clone(),
        online,
        default_module: (names.len() == 1).then(|| names[0].clone()),
    };
    let (stop, stopped) = Started::flag();
    let task = tokio::spawn(crate::api::serve(listener, state, stopped));
    started.add("control API", stop, async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        let _ = std::fs::remove_file(url_file);
    });
    Ok(())
}

/// What the supervisor starts: the deployment's running modules that are not external, as
/// processes (with the environment edgeAgent gives a module) or, with `--docker`, as containers.
fn module_specs(
    setup: &Setup,
    hub_port: u16,
    docker: bool,
) -> Result<(Vec<ModuleProcess>, Vec<crate::docker::ContainerSpec>), EdgeDevError> {
    let (opts, ids, names) = (&setup.opts, &setup.ids, &setup.names);
    let socket = setup.workload_socket();
    let run_dir = setup.run_dir();
    let mut processes = Vec::new();
    let mut containers = Vec::new();
    for (name, spec) in setup.manifest.modules() {
        if opts.external.iter().any(|e| e == name) {
            tracing::info!(
                module = name,
                "external: not started; run it with `edge-dev module-cred {name}`"
            );
            continue;
        }
        if spec.status != DesiredStatus::Running {
            tracing::info!(module = name, "desired status is not running; not started");
            continue;
        }
        let cred = &ids.modules[name];
        if docker {
            containers.push(crate::docker::ContainerSpec::for_module(
                name,
                spec,
                &cred.generation_id,
                ids,
                hub_port,
            ));
            continue;
        }
        let folder = edge_manifest::module_folder_for_image(&setup.modules_dir, &spec.image).ok_or_else(|| {
            EdgeDevError::Config(format!(
                "module {name}: no modules/<folder>/module.json builds the image {:?}, so edge-dev cannot run it as a process; run it yourself with --external {name}",
                spec.image
            ))
        })?;
        let mut env = base_env();
        for (k, v) in &spec.env {
            env.insert(k.clone(), local_host(v, names));
        }
        env.insert(
            "IOTEDGE_WORKLOADURI".into(),
            format!("unix://{}", socket.display()),
        );
        env.insert("IOTEDGE_AUTHSCHEME".into(), "sasToken".into());
        env.insert(
            "IOTEDGE_MODULEGENERATIONID".into(),
            cred.generation_id.clone(),
        );
        env.insert("IOTEDGE_IOTHUBHOSTNAME".into(), ids.iothub_hostname.clone());
        env.insert(
            "IOTEDGE_GATEWAYHOSTNAME".into(),
            opts.gateway_hostname.clone(),
        );
        env.insert("IOTEDGE_GATEWAYPORT".into(), hub_port.to_string());
        env.insert("IOTEDGE_DEVICEID".into(), ids.device_id.clone());
        env.insert("IOTEDGE_MODULEID".into(), name.to_string());
        env.insert("IOTEDGE_APIVERSION".into(), WORKLOAD_API_VERSION.into());
        processes.push(ModuleProcess {
            name: name.to_string(),
            program: opts.bin_dir.join(&folder),
            args: Vec::new(),
            env,
            working_dir: setup.data_dir.join("modules").join(name),
            restart_policy: spec.restart_policy,
            startup_order: spec.startup_order,
            pid_file: Some(run_dir.join(format!("{name}.pid"))),
        });
    }
    Ok((processes, containers))
}

/// Binds the dashboard, fills it from the upstream log, prints its URL and serves it until `stop`.
#[allow(clippy::too_many_arguments)]
async fn start_dashboard(
    addr: SocketAddr,
    opts: &UpOptions,
    hub: &HubHandle,
    device_id: &str,
    module_metrics: BTreeMap<String, String>,
    status: &StatusMap,
    tap: &tokio::sync::broadcast::Sender<edge_hub::StoredMessage>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(tokio::task::JoinHandle<()>, dashboard::Dashboard), EdgeDevError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        EdgeDevError::Config(format!("cannot listen on {addr} for the dashboard ({e}); use --dashboard ADDR to pick another address or --no-dashboard"))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| EdgeDevError::Config(format!("dashboard: {e}")))?;
    let stats_hub = hub.clone();
    let dash = dashboard::Dashboard::new(
        dashboard::DashboardOptions {
            device_id: device_id.to_string(),
            offline: opts.offline,
            module_metrics,
            token: opts.dashboard_token.clone(),
            ..Default::default()
        },
        Arc::new(move || stats_hub.stats()),
        status.clone(),
    );
    if let Some(log) = &opts.upstream_log {
        match dash.load_log(log) {
            Ok(n) => tracing::info!(
                "dashboard: {n} window averages of the last hours read from {}",
                log.display()
            ),
            Err(e) => tracing::warn!("dashboard: cannot read the upstream log: {e}"),
        }
    }
    println!("edge-dev: dashboard http://{bound}");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(dash.clone().follow(tap.subscribe(), wait_true(stop_rx)));
    let served = dash.clone();
    let task = tokio::spawn(async move {
        let stopping = async move {
            stop.await;
            let _ = stop_tx.send(true);
        };
        if let Err(e) = dashboard::serve(listener, served, stopping).await {
            tracing::error!("dashboard: {e}");
        }
    });
    Ok((task, dash))
}

/// `modules` beside the manifest.
pub fn default_modules_dir(manifest: &Path) -> PathBuf {
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
        .join("modules")
}

/// The environment a module process gets: like a container, nothing of ours but a few basics.
fn base_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for k in ["PATH", "HOME", "LANG", "TZ", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.to_string(), v);
        }
    }
    env
}

/// On IoT Edge a module reaches another module by its name on the edge network. Local processes have no
/// such names, so a value that is exactly a module name (or `edgeHub`) becomes 127.0.0.1.
pub fn local_host(value: &str, modules: &[String]) -> String {
    if value.eq_ignore_ascii_case("edgeHub")
        || modules.iter().any(|m| m.eq_ignore_ascii_case(value))
    {
        "127.0.0.1".to_string()
    } else {
        value.to_string()
    }
}

fn absolute(p: &Path) -> Result<PathBuf, EdgeDevError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| EdgeDevError::Io {
        path: p.to_path_buf(),
        source: e,
    })?;
    Ok(cwd.join(p))
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_become_loopback_for_local_processes() {
        let mods = vec!["MqttServerModule".to_string()];
        assert_eq!(local_host("MqttServerModule", &mods), "127.0.0.1");
        assert_eq!(local_host("mqttservermodule", &mods), "127.0.0.1");
        assert_eq!(local_host("edgeHub", &mods), "127.0.0.1");
        assert_eq!(local_host("1889", &mods), "1889");
        assert_eq!(local_host("example.org", &mods), "example.org");
    }
}
