//! `mqtt-server`: MqttServerModule's binary. Parses the command line, layers the settings
//! (edge-module: defaults, `--settings`/`--config` file, `MQTT_*` environment, a flag per
//! setting), sets up logging, connects to edgeHub and runs the server until SIGTERM (docker stop)
//! or SIGINT.

mod edgehub;

use std::sync::Arc;

use anyhow::Context;
use clap::{Arg, Command};
use mqtt_server::{Forwarder, Listeners, Server, Settings};
use tokio::net::TcpListener;

/// Where forwarded messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Sink {
    /// edgeHub, as an IoT Edge module (identity from IOTEDGE_* or EdgeHubConnectionString).
    Edgehub,
    /// One JSON line per message on stdout (a local run without edgeHub; acknowledges at once).
    Stdout,
}

/// The command line: the module's own arguments (`--sink`, `--log`) and, from edge-module, a flag
/// per setting, `--settings FILE` (also `--config`, its earlier name) and `--print-settings`.
fn command() -> anyhow::Result<Command> {
    let cmd = Command::new("mqtt-server")
        .version(env!("CARGO_PKG_VERSION"))
        .about("MqttServerModule: MQTT server that forwards device publishes to edgeHub")
        .arg(
            Arg::new("sink")
                .long("sink")
                .value_parser(clap::builder::EnumValueParser::<Sink>::new())
                .default_value("edgehub")
                .help("Where messages go"),
        )
        .arg(
            Arg::new("log")
                .long("log")
                .default_value("info")
                .help("Log filter (tracing-subscriber syntax); RUST_LOG wins when set"),
        );
    Ok(
        edge_module::cli::command::<Settings>(cmd, &mqtt_server::settings::NAMES)?
            .mut_arg("settings", |a| a.visible_alias("config")),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = command()?.get_matches();
    let log = matches
        .get_one::<String>("log")
        .map_or("info", String::as_str);
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| log.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).context("invalid log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let sink = matches
        .get_one::<Sink>("sink")
        .copied()
        .unwrap_or(Sink::Edgehub);
    let cli = edge_module::cli::from_matches::<Settings>(
        &matches,
        &mqtt_server::settings::NAMES,
        std::env::vars_os(),
    )?;
    if cli.print_settings {
        println!("{}", serde_json::to_string_pretty(cli.layered.settings())?);
        return Ok(());
    }
    let settings = cli.layered.into_settings();
    // a mistake in the password or ACL file stops the module now, not after it reached edgeHub
    mqtt_server::check_files(&settings)?;

    let mqtt = TcpListener::bind((settings.bind_address.as_str(), settings.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{}; is the port free?",
                settings.bind_address, settings.port
            )
        })?;
    let tls = match settings.tls_port {
        Some(port) => {
            let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) else {
                anyhow::bail!("MQTT_TLS_PORT needs MQTT_TLS_CERT and MQTT_TLS_KEY");
            };
            let acceptor = mqtt_server::tls_acceptor(cert, key)?;
            let l = TcpListener::bind((settings.bind_address.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on TLS port {port}"))?;
            Some((l, acceptor))
        }
        None => None,
    };
    // metrics are an aid, not a reason to stop forwarding readings
    let metrics = if settings.metrics_port == 0 {
        None
    } else {
        match TcpListener::bind((settings.bind_address.as_str(), settings.metrics_port)).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(port = settings.metrics_port, error = %e, "metrics endpoint disabled: cannot bind its port");
                None
            }
        }
    };
    tracing::info!(
        addr = %mqtt.local_addr()?, tls = ?tls.as_ref().map(|(l, _)| l.local_addr().ok()),
        metrics = ?metrics.as_ref().map(|l| l.local_addr().ok()), output = %settings.output, sink = ?sink,
        "MqttServerModule starting"
    );

    let (forwarder, twin): (Arc<dyn Forwarder>, Option<edgehub::Twin>) = match sink {
        Sink::Stdout => (Arc::new(StdoutSink), None),
        Sink::Edgehub => {
            let (f, twin) = edgehub::connect().await?;
            (f, Some(twin))
        }
    };
    let server = Server::new(settings, forwarder)?;
    if let Some(mut twin) = twin {
        // devices wait in the listen backlog meanwhile
        twin.initial(&server.handle(), std::time::Duration::from_secs(10))
            .await;
        tokio::spawn(twin.run(server.handle()));
    }
    server
        .run(
            Listeners { mqtt, tls, metrics },
            edge_module::shutdown_signal(),
        )
        .await?;
    tracing::info!("MqttServerModule stopped");
    Ok(())
}

/// Writes each message as one JSON line on stdout.
struct StdoutSink;

impl Forwarder for StdoutSink {
    fn forward(
        &self,
        output: String,
        m: mqtt_server::Message,
    ) -> mqtt_server::BoxFuture<'_, Result<(), mqtt_server::ForwardError>> {
        Box::pin(async move {
            let line = serde_json::json!({
                "output": output,
                "body": String::from_utf8_lossy(&m.body),
                "messageId": m.message_id,
                "correlationId": m.correlation_id,
                "contentType": m.content_type,
                "contentEncoding": m.content_encoding,
                "creationTime": m.creation_time,
                "properties": m.properties,
            });
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| {
                    mqtt_server::ForwardError::transient(format!("cannot write to stdout: {e}"))
                })
        })
    }
}
