//! The `aggregator` binary: AggregatorModule under IoT Edge (the default), or `aggregator replay`.

use std::io::BufReader;
use std::path::PathBuf;

use aggregator::settings::PolicySettings;
use aggregator::Settings;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "AggregatorModule: Azure Stream Analytics queries on the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run as the IoT Edge module (the default): reads IOTEDGE_* or EdgeHubConnectionString, and
    /// AGGREGATOR_QUERY, AGGREGATOR_STATE_DIR, AGGREGATOR_TICK_MS.
    Run,
    /// Run a query over a file of JSON events (one per line) and print each output row as a JSON line.
    Replay {
        /// The query text, or the path of a file that holds it.
        #[arg(long)]
        query: String,
        /// The events, one JSON object per line (`-` for standard input).
        #[arg(long)]
        input: PathBuf,
        /// The query input the events belong to (default: the query's first FROM name).
        #[arg(long)]
        from: Option<String>,
        /// Out-of-order tolerance in seconds (ASA default 0).
        #[arg(long, default_value_t = 0)]
        out_of_order_tolerance_secs: u64,
        /// Late-arrival tolerance in seconds (ASA default 5).
        #[arg(long, default_value_t = 5)]
        late_arrival_tolerance_secs: u64,
        /// Action for events outside the tolerances: Adjust or Drop.
        #[arg(long, default_value = "Adjust")]
        action: String,
        /// Early-arrival limit in seconds (ASA: 300).
        #[arg(long, default_value_t = 300)]
        early_arrival_limit_secs: u64,
        /// Reference data the query JOINs, as NAME=FILE (CSV, or JSON lines); repeat for each.
        #[arg(long = "reference", value_name = "NAME=FILE")]
        references: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    edge_module::init_tracing();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_module(),
        Command::Replay {
            query,
            input,
            from,
            out_of_order_tolerance_secs,
            late_arrival_tolerance_secs,
            action,
            early_arrival_limit_secs,
            references,
        } => {
            let mut refs = Vec::new();
            for r in &references {
                let (name, path) = r.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!(
                        "--reference {r:?}: write NAME=FILE, e.g. patients=patients.csv"
                    )
                })?;
                let rows = aggregator::reference::read_file(std::path::Path::new(path))
                    .map_err(|e| anyhow::anyhow!("--reference {name}: {e}"))?;
                refs.push((name.to_string(), rows));
            }
            let text = match std::fs::read_to_string(&query) {
                Ok(t) => t,
                Err(_) => query,
            };
            let q = stream_query::Query::parse(&text)
                .map_err(|e| anyhow::anyhow!("the query does not parse: {e}"))?;
            let policy = PolicySettings {
                out_of_order_tolerance_secs,
                late_arrival_tolerance_secs,
                action,
                early_arrival_limit_secs,
            }
            .to_policy()?;
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            let summary = if input.as_os_str() == "-" {
                aggregator::replay::replay(
                    q,
                    policy,
                    from.as_deref(),
                    &refs,
                    std::io::stdin().lock(),
                    // rows go out in blocks, not one write per line
                    std::io::BufWriter::with_capacity(1 << 16, stdout.lock()),
                    stderr.lock(),
                )?
            } else {
                let f = std::fs::File::open(&input)
                    .with_context(|| format!("cannot open {}", input.display()))?;
                aggregator::replay::replay(
                    q,
                    policy,
                    from.as_deref(),
                    &refs,
                    BufReader::new(f),
                    // rows go out in blocks, not one write per line
                    std::io::BufWriter::with_capacity(1 << 16, stdout.lock()),
                    stderr.lock(),
                )?
            };
            tracing::info!(
                events = summary.events,
                rows = summary.rows,
                rejected = summary.rejected,
                "replay finished"
            );
            Ok(())
        }
    }
}

fn run_module() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (client, events) = edge_module::connect(edge_client::ClientOptions::default())
            .await
            .context("AggregatorModule runs under IoT Edge (or edge-dev)")?;
        tracing::info!(state_dir = %settings.state_dir.display(), "AggregatorModule started");
        aggregator::run(settings, client, events, edge_module::shutdown_signal()).await?;
        tracing::info!("AggregatorModule stopped");
        Ok(())
    })
}
