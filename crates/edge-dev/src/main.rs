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
        /// Run the modules as containers from their images (built by scripts/build-images.sh) on a
        /// user-defined network, with createOptions applied and the hub reachable as `edgeHub`.
        #[arg(long)]
        docker: bool,
        /// The user-defined docker network for --docker (created and removed if it does not exist).
        #[arg(long, default_value = "azure-iot-edge", requires = "docker")]
        docker_network: String,
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
                docker,
                docker_network,
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
                    docker: docker.then(|| edge_dev::docker::DockerOptions {
                        network: docker_network,
                        ..Default::default()
                    }),
                };
                up::up(opts, edge_client::shutdown_signal()).await?;
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
            Command::ModuleCred {
                name,
                gateway_hostname,
            } => {
                let ids = edge_dev::identities::Identities::load_or_create(
                    &cli.data_dir,
                    [name.as_str()],
                )?;
                let pki = edge_dev::pki::DevPki::load_or_create(
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
