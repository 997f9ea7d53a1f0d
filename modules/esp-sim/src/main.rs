//! `esp-sim`: the command line and IoT Edge module entry point. `edge-module` derives the flags and
//! variables from the settings' fields (plus [`esp_sim::settings::NAMES`]), layers them over defaults or
//! a `--settings` JSON file, and sets up tracing; this runs the library until SIGTERM/SIGINT or
//! `--duration` and prints the summary as JSON.

use esp_sim::settings::NAMES;
use esp_sim::Settings;

const ABOUT: &str =
    "ESPSimModule: simulated ESP8266 temperature sensors over plain MQTT (3.1.1, or 5)";

const LONG_ABOUT: &str = "ESPSimModule: simulated ESP8266 temperature sensors over plain MQTT (3.1.1, or 5).

Default: the seed's simulator, {\"temp\":<35..41>, \"timecreated\":\"<MM/dd/yyyy HH:mm:ss>\"} to \
MyTopic, QoS 2, retained, every 2 s, to localhost:1889. --mode fleet simulates --devices patients, \
--mode load sends --rate messages per second over the fleet. Under IoT Edge (IOTEDGE_MODULEID set) \
and when built with the `module` feature, the module twin's desired properties override everything, \
live.

Every setting is a flag and an ESP_SIM_ variable of its JSON name (interval_ms: --interval-ms, \
ESP_SIM_INTERVAL_MS; faults.clock_skew: --faults-clock-skew); the README lists units and defaults.";

fn command() -> clap::Command {
    clap::Command::new("esp-sim")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .long_about(LONG_ABOUT)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    edge_module::init_tracing();
    let cli = edge_module::cli::parse::<Settings>(command(), &NAMES)?;
    if cli.print_settings {
        println!("{}", serde_json::to_string_pretty(cli.layered.settings())?);
        return Ok(());
    }

    let summary = if edge_module::under_iot_edge() {
        run_module(cli.layered).await?
    } else {
        esp_sim::run(cli.layered.into_settings(), edge_module::shutdown_signal()).await?
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

#[cfg(feature = "module")]
async fn run_module(layered: edge_module::Layered<Settings>) -> anyhow::Result<esp_sim::Summary> {
    Ok(esp_sim::module::run_module(layered).await?)
}

#[cfg(not(feature = "module"))]
async fn run_module(layered: edge_module::Layered<Settings>) -> anyhow::Result<esp_sim::Summary> {
    tracing::warn!(
        "IoT Edge environment found but this build has no `module` feature: running from \
         environment and flags only, the module twin is not read"
    );
    Ok(esp_sim::run(layered.into_settings(), edge_module::shutdown_signal()).await?)
}
