//! The `edge-dev` binary: a local Azure IoT Edge runtime for development and tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_dev::up::{self, UpOptions};

#[derive(Parser)]
#[command(
    version,
    about = "A local Azure IoT Edge runtime: edgeHub's module protocol, routes, twins, store-and-forward, and a supervisor"
)]
struct Cli {
    /// Folder for certificates, keys, the hub's durable store and the modules' working folders.
    #[arg(
        long,
        global = true,
        default_value = ".edge-dev",
        env = "EDGE_DEV_DATA_DIR"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

// Parsed once; the size of the `Up` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the deployment: the hub, the workload API, the upstream sink and every module whose status is running.
    Up {
        /// The deployment template or generated deployment.
        #[arg(long, default_value = "deployment.template.json")]
        manifest: PathBuf,
        /// Platform used to expand a template's ${MODULES.x} placeholders.
        #[arg(long, default_value = "amd64")]
        platform: String,
        /// Folder of the module folders holding module.json (default: `modules` beside the manifest).
        #[arg(long)]
        modules_dir: Option<PathBuf>,
        /// Append every upstream message to this file as one JSON line.
        #[arg(long)]
        upstream_log: Option<PathBuf>,
        /// Stop by itself after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// A module not to start: you run it yourself with `edge-dev module-cred NAME` (repeatable).
        #[arg(long)]
        external: Vec<String>,
        /// Address of the hub's MQTT-over-TLS listener (edgeHub's port is 8883; the Azure SDKs use no other).
        #[arg(long, default_value = "127.0.0.1:8883")]
        hub_listen: SocketAddr,
        /// Also listen for plain MQTT (no TLS) here, for local tools.
        #[arg(long)]
        plain_listen: Option<SocketAddr>,
        /// Folder of the module binaries (default: the folder of this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Forward upstream messages to a real IoT Hub with this device connection string.
        #[arg(
            long,
            env = "EDGE_DEV_IOTHUB_CONNECTION_STRING",
            hide_env_values = true
        )]
        iothub_connection_string: Option<String>,
        /// Host name the modules use for the hub (IOTEDGE_GATEWAYHOSTNAME).
        #[arg(long, default_value = "localhost")]
        gateway_hostname: String,
        /// Do not print a line per upstream message.
        #[arg(long)]
        quiet: bool,
        /// Play a lost internet connection: keep upstream messages in the store-and-forward queue.
        #[arg(long)]
        offline: bool,
        /// Address of the dashboard (web page, JSON API, /metrics); port 0 picks a free port.
        #[arg(long, default_value = edge_dev::dashboard::DEFAULT_ADDR)]
        dashboard: SocketAddr,
        /// Do not serve the dashboard.
        #[arg(long, conflicts_with = "dashboard")]
        no_dashboard: bool,
        /// A secret the dashboard asks of every request (open /?token=... once); required when
        /// --dashboard is not a loopback address. At least 16 characters.
        #[arg(long, env = "EDGE_DEV_DASHBOARD_TOKEN", hide_env_values = true)]
        dashboard_token: Option<String>,
        /// Run the modules as containers from their images (built by scripts/build-images.sh) on a
        /// user-defined network, with createOptions applied and the hub reachable as `edgeHub`.
        #[arg(long)]
        docker: bool,
        /// The user-defined docker network for --docker (created and removed if it does not exist).
        #[arg(long, default_value = "azure-iot-edge", requires = "docker")]
        docker_network: String,
        /// Address of the control API (edge-dev send / twin / invoke / upstream / monitor; iotedgehubdev's
        /// POST /api/v1/messages); port 0 picks a free port.
        #[arg(long, default_value = edge_dev::api::DEFAULT_ADDR)]
        api: SocketAddr,
        /// Do not serve the control API.
        #[arg(long, conflicts_with = "api")]
        no_api: bool,
        /// Run the hub for this one module, which you run yourself, without a deployment (iotedgehubdev's
        /// single-module mode): its outputs go $upstream; feed its inputs with `edge-dev send`; get its
        /// credentials with `edge-dev module-cred NAME`.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["docker"])]
        single_module: Option<String>,
    },
    /// Send a message to a module's input through the running edge-dev (as a route would deliver it).
    Send {
        /// The input name.
        #[arg(long, short = 'i')]
        input: String,
        /// The module (may be left out when the deployment has one module).
        #[arg(long, short = 'm')]
        module: Option<String>,
        /// The message body: text, sent as it is (JSON text gets content type application/json).
        #[arg(long, short = 'd', conflicts_with = "file")]
        data: Option<String>,
        /// Read the body from this file.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// An application property `key=value` (repeatable).
        #[arg(long = "property", short = 'p', value_name = "KEY=VALUE")]
        properties: Vec<String>,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Merge a JSON patch into a running module's desired properties (the module gets a desired patch).
    Twin {
        module: String,
        /// A JSON merge patch, e.g. '{"query": "SELECT ..."}'.
        #[arg(long)]
        patch: String,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Call a module's direct method; prints the status and the response payload.
    Invoke {
        module: String,
        method: String,
        /// The request payload (JSON).
        #[arg(long, default_value = "null")]
        payload: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Take the upstream link down (messages stay in the store-and-forward queue) or up (they drain), or
    /// show its state.
    Upstream {
        #[arg(value_enum)]
        state: Option<LinkSwitch>,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Print every message the hub takes (one JSON line each, with the endpoints its routes chose),
    /// like `az iot hub monitor-events`.
    Monitor {
        /// Only messages from this module.
        #[arg(long)]
        module: Option<String>,
        /// Only messages on this output.
        #[arg(long)]
        output: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Expand deployment.template.json into config/deployment.<platform>.json, as `iotedgedev genconfig` does.
    Genconfig {
        #[arg(long, short = 'f', default_value = "deployment.template.json")]
        template: PathBuf,
        #[arg(long, short = 'P', default_value = "amd64")]
        platform: String,
        #[arg(long, default_value = "config")]
        out_dir: PathBuf,
    },
    /// Check a deployment (template or generated) and print every problem found.
    Validate {
        #[arg(long, default_value = "deployment.template.json")]
        manifest: PathBuf,
        #[arg(long, default_value = "amd64")]
        platform: String,
    },
    /// Print the connection string and CA certificate path of a module you run yourself (--external).
    ModuleCred {
        /// The module's name in the deployment.
        name: String,
        #[arg(long, default_value = "localhost")]
        gateway_hostname: String,
    },
}

/// Where the running edge-dev's control API is.
#[derive(clap::Args)]
struct ApiArg {
    /// The API's URL (default: the one the edge-dev running on --data-dir recorded).
    #[arg(long)]
    api_url: Option<String>,
}

impl ApiArg {
    fn client(&self, data_dir: &std::path::Path) -> anyhow::Result<edge_dev::api::Client> {
        Ok(edge_dev::api::Client::find(
            data_dir,
            self.api_url.as_deref(),
        )?)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LinkSwitch {
    Online,
    Offline,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Up {
                manifest,
                platform,
                modules_dir,
                upstream_log,
                duration,
                external,
                hub_listen,
                plain_listen,
                bin_dir,
                iothub_connection_string,
                gateway_hostname,
                quiet,
                offline,
                dashboard,
                no_dashboard,
                dashboard_token,
                docker,
                docker_network,
                api,
                no_api,
                single_module,
            } => {
                let bin_dir = match bin_dir {
                    Some(d) => d,
                    None => std::env::current_exe()?
                        .parent()
                        .map(|p| p.to_path_buf())
                        .context("cannot tell the folder of the edge-dev binary; use --bin-dir")?,
                };
                let duration = match duration {
                    Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
                    Some(s) => anyhow::bail!("--duration {s}: give a positive number of seconds"),
                    None => None,
                };
                let opts = UpOptions {
                    manifest,
                    platform,
                    modules_dir,
                    data_dir: cli.data_dir,
                    upstream_log,
                    duration,
                    external,
                    hub_listen,
                    plain_listen,
                    bin_dir,
                    iothub_connection_string,
                    gateway_hostname,
                    console: !quiet,
                    offline,
                    backoff: Default::default(),
                    dashboard: (!no_dashboard).then_some(dashboard),
                    dashboard_token,
                    docker: docker.then(|| edge_dev::docker::DockerOptions {
                        network: docker_network,
                        ..Default::default()
                    }),
                    api: (!no_api).then_some(api),
                    single_module,
                };
                up::up(opts, edge_module::shutdown_signal()).await?;
            }
            Command::Genconfig {
                template,
                platform,
                out_dir,
            } => {
                let dir = template
                    .parent()
                    .map(|p| p.to_path_buf())
                    .unwrap_or_else(|| PathBuf::from("."));
                let ctx =
                    up::template_context(&dir, &up::default_modules_dir(&template), &platform)?;
                let out = edge_manifest::genconfig(&template, &platform, &out_dir, &ctx.vars)?;
                println!("wrote {}", out.display());
            }
            Command::Validate { manifest, platform } => {
                let m =
                    up::load_manifest(&manifest, &platform, &up::default_modules_dir(&manifest))?;
                println!(
                    "{}: valid ({} modules, {} routes)",
                    manifest.display(),
                    m.modules().count(),
                    m.routes()?.len()
                );
            }
            Command::Send {
                input,
                module,
                data,
                file,
                properties,
                api,
            } => {
                let client = api.client(&cli.data_dir)?;
                let text = match (data, file) {
                    (Some(d), _) => d,
                    (None, Some(f)) => std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?,
                    (None, None) => anyhow::bail!("give the body with --data TEXT or --file PATH"),
                };
                let mut props = serde_json::Map::new();
                for p in properties {
                    let (k, v) = p
                        .split_once('=')
                        .with_context(|| format!("--property {p:?}: write KEY=VALUE"))?;
                    props.insert(k.to_string(), serde_json::Value::String(v.to_string()));
                }
                let json_body = serde_json::from_str::<serde_json::Value>(&text).is_ok();
                let mut req =
                    serde_json::json!({"inputName": input, "data": text, "properties": props});
                if json_body {
                    req["contentType"] = "application/json".into();
                }
                if let Some(m) = module {
                    req["moduleName"] = m.into();
                }
                let r = client
                    .call(hyper::Method::POST, "/api/v1/messages", Some(&req))
                    .await?;
                println!(
                    "queued for {}/{}",
                    r["module"].as_str().unwrap_or("?"),
                    r["input"].as_str().unwrap_or("?")
                );
            }
            Command::Twin { module, patch, api } => {
                let client = api.client(&cli.data_dir)?;
                let patch: serde_json::Value =
                    serde_json::from_str(&patch).context("--patch is not JSON")?;
                let r = client
                    .call(
                        hyper::Method::PATCH,
                        &format!(
                            "/api/v1/modules/{}/twin/desired",
                            edge_client::wire::quote(&module)
                        ),
                        Some(&patch),
                    )
                    .await?;
                println!(
                    "desired properties of {module} now at $version {}",
                    r["version"]
                );
            }
            Command::Invoke {
                module,
                method,
                payload,
                timeout,
                api,
            } => {
                let client = api.client(&cli.data_dir)?;
                let payload: serde_json::Value =
                    serde_json::from_str(&payload).context("--payload is not JSON")?;
                let r = client
                    .call(
                        hyper::Method::POST,
                        &format!(
                            "/api/v1/modules/{}/methods/{}",
                            edge_client::wire::quote(&module),
                            edge_client::wire::quote(&method)
                        ),
                        Some(&serde_json::json!({"payload": payload, "timeoutSecs": timeout})),
                    )
                    .await?;
                println!("status {}", r["status"]);
                println!("{}", serde_json::to_string_pretty(&r["payload"])?);
            }
            Command::Upstream { state, api } => {
                let client = api.client(&cli.data_dir)?;
                let r = match state {
                    Some(s) => {
                        let online = matches!(s, LinkSwitch::Online);
                        client
                            .call(
                                hyper::Method::PUT,
                                "/api/v1/upstream",
                                Some(&serde_json::json!({ "online": online })),
                            )
                            .await?
                    }
                    None => {
                        client
                            .call(hyper::Method::GET, "/api/v1/upstream", None)
                            .await?
                    }
                };
                println!(
                    "upstream {} ({} message(s) queued)",
                    if r["online"] == true {
                        "online"
                    } else {
                        "offline"
                    },
                    r["depth"]
                );
            }
            Command::Monitor {
                module,
                output,
                count,
                api,
            } => {
                let client = api.client(&cli.data_dir)?;
                if count == Some(0) {
                    return Ok(());
                }
                let mut seen = 0u64;
                client
                    .monitor(module.as_deref(), output.as_deref(), |line| {
                        println!("{line}");
                        seen += 1;
                        count.is_none_or(|c| seen < c)
                    })
                    .await?;
            }
            Command::ModuleCred {
                name,
                gateway_hostname,
            } => {
                let ids = edge_dev::identities::Identities::load_or_create(
                    &cli.data_dir,
                    [name.as_str()],
                )?;
                let pki = edge_hub::pki::DevPki::load_or_create(
                    &cli.data_dir.join("certs"),
                    &[gateway_hostname.as_str(), "localhost", "edgeHub"],
                )?;
                let cs = ids
                    .connection_string(&name, &gateway_hostname)
                    .context("module has no credential")?;
                println!("EdgeHubConnectionString={cs}");
                println!(
                    "EdgeModuleCACertificateFile={}",
                    std::fs::canonicalize(&pki.ca_path)?.display()
                );
            }
        }
        Ok(())
    })
}
