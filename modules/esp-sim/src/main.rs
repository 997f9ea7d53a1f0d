//! `esp-sim`: the command line and IoT Edge module entry point. Parses flags (each also an
//! environment variable), layers them over defaults or a `--settings` JSON file, sets up tracing,
//! and runs the library until SIGTERM/SIGINT or `--duration`. Prints the summary as JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use esp_sim::{Mode, Settings, TimeFormat};

/// ESPSimModule: simulated ESP8266 temperature sensors over plain MQTT (3.1.1, or 5).
///
/// Default: the seed's simulator, `{"temp":<35..41>, "timecreated":"<MM/dd/yyyy HH:mm:ss>"}` to
/// `MyTopic`, QoS 2, retained, every 2 s, to localhost:1889. Under IoT Edge (IOTEDGE_MODULEID set)
/// and when built with the `module` feature, the module twin's desired properties override
/// everything, live.
#[derive(Debug, Parser)]
#[command(name = "esp-sim", version)]
struct Cli {
    /// JSON settings file (field names as in the README); flags and environment override it.
    #[arg(long, env = "ESP_SIM_SETTINGS")]
    settings: Option<PathBuf>,
    /// MQTT server host. [default: localhost]
    #[arg(long, env = "MQTT_HOST")]
    host: Option<String>,
    /// MQTT server port. [default: 1889]
    #[arg(long, env = "MQTT_PORT")]
    port: Option<u16>,
    /// seed | fleet | load. [default: seed]
    #[arg(long, env = "ESP_SIM_MODE")]
    mode: Option<Mode>,
    /// Number of devices (fleet, load). [default: 10]
    #[arg(long, env = "ESP_SIM_DEVICES")]
    devices: Option<u32>,
    /// Milliseconds between two messages of one device (seed, fleet). [default: 2000]
    #[arg(long, env = "ESP_SIM_INTERVAL_MS")]
    interval_ms: Option<u64>,
    /// Load mode: aggregate target rate, messages per second. [default: 1000]
    #[arg(long, env = "ESP_SIM_RATE")]
    rate: Option<f64>,
    /// Random seed (reported in the summary when not given).
    #[arg(long, env = "ESP_SIM_SEED")]
    seed: Option<u64>,
    /// Write every published message to this file as JSON lines.
    #[arg(long, env = "ESP_SIM_SENT_LOG")]
    sent_log: Option<PathBuf>,
    /// Stop after this many seconds and print a summary.
    #[arg(long, env = "ESP_SIM_DURATION")]
    duration: Option<f64>,
    /// Stop each device after this many messages.
    #[arg(long, env = "ESP_SIM_COUNT")]
    count: Option<u64>,
    /// Simulated clock start (RFC 3339), for reproducible timestamps.
    #[arg(long, env = "ESP_SIM_START_TIME")]
    start_time: Option<chrono::DateTime<chrono::Utc>>,
    /// rfc3339 | dotnet-invariant | dotnet-en-us. [default: dotnet-invariant in seed mode, else rfc3339]
    #[arg(long, env = "ESP_SIM_TIME_FORMAT")]
    time_format: Option<TimeFormat>,
    /// Topic; `{device}` becomes the device id. [default: MyTopic]
    #[arg(long, env = "ESP_SIM_TOPIC")]
    topic: Option<String>,
    /// QoS 0, 1 or 2. [default: 2 in seed mode, else 1]
    #[arg(long, env = "ESP_SIM_QOS")]
    qos: Option<u8>,
    /// Retain flag. [default: true in seed mode, else false]
    #[arg(long, env = "ESP_SIM_RETAIN")]
    retain: Option<bool>,
    /// Client id prefix (also the fleet's deviceId prefix). [default: esp-sim]
    #[arg(long, env = "ESP_SIM_CLIENT_ID")]
    client_id: Option<String>,
    /// Speak MQTT 5 instead of 3.1.1.
    #[arg(long, env = "ESP_SIM_MQTT5")]
    mqtt5: Option<bool>,
    /// Fever episodes per patient per simulated day. [default: 0.2]
    #[arg(long, env = "ESP_SIM_FEVER_PER_DAY")]
    fever_per_day: Option<f64>,
    /// Fault rate: payload cut short (invalid JSON). [default: 0]
    #[arg(long, env = "ESP_SIM_FAULT_MALFORMED")]
    fault_malformed: Option<f64>,
    /// Fault rate: temp or timecreated missing. [default: 0]
    #[arg(long, env = "ESP_SIM_FAULT_MISSING")]
    fault_missing: Option<f64>,
    /// Fault rate: temp as a string or timecreated as a number. [default: 0]
    #[arg(long, env = "ESP_SIM_FAULT_MISTYPED")]
    fault_mistyped: Option<f64>,
    /// Fault rate: temp outside 25..45 C. [default: 0]
    #[arg(long, env = "ESP_SIM_FAULT_OUT_OF_RANGE")]
    fault_out_of_range: Option<f64>,
    /// Fault rate: timecreated late (and so out of order) by up to --max-skew s. [default: 0]
    #[arg(long, env = "ESP_SIM_FAULT_CLOCK_SKEW")]
    fault_clock_skew: Option<f64>,
    /// Largest clock skew, seconds. [default: 120]
    #[arg(long, env = "ESP_SIM_MAX_SKEW")]
    max_skew: Option<f64>,
    /// Fault rate: abrupt disconnect after a message. [default: 0]
    #[arg(long, env = "ESP_SIM_FAULT_DISCONNECT")]
    fault_disconnect: Option<f64>,
    /// Disconnect storm every this many seconds. [default: none]
    #[arg(long, env = "ESP_SIM_STORM_EVERY")]
    storm_every: Option<f64>,
    /// Share of devices that drop in a storm. [default: 0.5]
    #[arg(long, env = "ESP_SIM_STORM_FRACTION")]
    storm_fraction: Option<f64>,
    /// Print the effective settings as JSON and exit.
    #[arg(long)]
    print_settings: bool,
}

fn settings_from(cli: &Cli) -> anyhow::Result<Settings> {
    let mut s = match &cli.settings {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            Settings::from_json(v)?
        }
        None => Settings::default(),
    };
    macro_rules! set {
        ($field:ident, $val:expr) => {
            if let Some(v) = $val.clone() {
                s.$field = v;
            }
        };
    }
    set!(host, cli.host);
    set!(port, cli.port);
    set!(mode, cli.mode);
    set!(devices, cli.devices);
    set!(interval_ms, cli.interval_ms);
    set!(rate, cli.rate);
    set!(client_id_prefix, cli.client_id);
    set!(topic, cli.topic);
    set!(fever_per_day, cli.fever_per_day);
    set!(mqtt5, cli.mqtt5);
    if cli.seed.is_some() {
        s.seed = cli.seed;
    }
    if cli.sent_log.is_some() {
        s.sent_log = cli.sent_log.clone();
    }
    if cli.duration.is_some() {
        s.duration_s = cli.duration;
    }
    if cli.count.is_some() {
        s.messages_per_device = cli.count;
    }
    if cli.start_time.is_some() {
        s.start_time = cli.start_time;
    }
    if cli.time_format.is_some() {
        s.time_format = cli.time_format;
    }
    if cli.qos.is_some() {
        s.qos = cli.qos;
    }
    if cli.retain.is_some() {
        s.retain = cli.retain;
    }
    let f = &mut s.faults;
    macro_rules! fault {
        ($field:ident, $val:expr) => {
            if let Some(v) = $val {
                f.$field = v;
            }
        };
    }
    fault!(malformed_json, cli.fault_malformed);
    fault!(missing_field, cli.fault_missing);
    fault!(mistyped_field, cli.fault_mistyped);
    fault!(out_of_range, cli.fault_out_of_range);
    fault!(clock_skew, cli.fault_clock_skew);
    fault!(max_skew_s, cli.max_skew);
    fault!(disconnect, cli.fault_disconnect);
    fault!(storm_fraction, cli.storm_fraction);
    if cli.storm_every.is_some() {
        f.storm_every_s = cli.storm_every;
    }
    s.validate()?;
    Ok(s)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Whether edgeAgent started us as a module.
fn under_iot_edge() -> bool {
    std::env::var_os("IOTEDGE_MODULEID").is_some()
        || std::env::var_os("EdgeHubConnectionString").is_some()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let settings = settings_from(&cli)?;
    if cli.print_settings {
        println!("{}", serde_json::to_string_pretty(&settings)?);
        return Ok(());
    }

    let summary = if under_iot_edge() {
        run_module(settings).await?
    } else {
        esp_sim::run(settings, shutdown_signal()).await?
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

#[cfg(feature = "module")]
async fn run_module(settings: Settings) -> anyhow::Result<esp_sim::Summary> {
    Ok(esp_sim::module::run_module(settings, shutdown_signal()).await?)
}

#[cfg(not(feature = "module"))]
async fn run_module(settings: Settings) -> anyhow::Result<esp_sim::Summary> {
    tracing::warn!(
        "IoT Edge environment found but this build has no `module` feature: running from \
         environment and flags only, the module twin is not read"
    );
    Ok(esp_sim::run(settings, shutdown_signal()).await?)
}
