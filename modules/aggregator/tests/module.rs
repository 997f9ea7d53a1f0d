//! The `aggregator` binary as an IoT Edge module against edge-dev's hub (edgeHub's protocol, routes,
//! twins, durable queues): the query comes from the twin and reloads live, a bad query is reported with
//! line and column while the previous one keeps running, unusable messages reach the dead-letter output,
//! and a `kill -9` loses no open window (inputs are acknowledged only after a checkpoint holds them).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edge_client::wire::Message;
use edge_client::{ClientOptions, Identity, ModuleClient};
use edge_hub::test_util::{connection_string, ModuleProcess, SmallDisk, TestHub};
use edge_hub::{HubHandle, StoredMessage};
use serde_json::{json, Value};
use tokio::time::timeout;

const AGG: &str = "AggregatorModule";
const FEEDER: &str = "Feeder";
const WAIT: Duration = Duration::from_secs(30);

/// The hub with the module and a feeder routed to its input `temperature`, the query in the
/// module's twin.
async fn start_hub(dir: &Path, query: &str) -> TestHub {
    TestHub::builder(dir)
        .modules(&[AGG, FEEDER])
        .route(
            "feed",
            r#"FROM /messages/modules/Feeder/outputs/out INTO BrokeredEndpoint("/modules/AggregatorModule/inputs/temperature")"#,
        )
        .route("up", "FROM /messages/modules/AggregatorModule/* INTO $upstream")
        .desired(AGG, json!({ "query": query }))
        .start()
        .await
}

fn start_aggregator(rig: &TestHub, state: &Path) -> ModuleProcess {
    start_aggregator_logging(rig, state, None)
}

/// The module on `state`; with `log`, its log (stderr) at level info goes to that file, without, its
/// warnings go to the test's stderr.
fn start_aggregator_logging(rig: &TestHub, state: &Path, log: Option<&Path>) -> ModuleProcess {
    let mut cmd = ModuleProcess::command(env!("CARGO_BIN_EXE_aggregator"), rig, AGG);
    cmd.env("AGGREGATOR_STATE_DIR", state)
        .env("AGGREGATOR_TICK_MS", "100");
    match log {
        Some(log) => cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(log).unwrap()),
        None => cmd.env("RUST_LOG", "warn"),
    };
    ModuleProcess::spawn(&mut cmd)
}

/// Waits until the hub's queue for the module is empty: the module acknowledged every input, which
/// it does only once its state holds them.
async fn wait_all_taken(hub: &HubHandle, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while hub.stats().modules.get(AGG).map(|s| s.queue_depth) != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the module did not take every input within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a restarted module (not the one that reported `first`) runs its query with the
/// restored state.
async fn wait_restarted(rig: &TestHub, first: &Value) {
    rig.wait_reported(AGG, |r| {
        r["startedAt"] != first["startedAt"] && r["query"]["status"] == "running"
    })
    .await;
}

/// The time of a test's first reading for its `TumblingWindow(minute, 10)`: a minute or more ahead
/// of now, and at least 200 s before the end of its 10-minute window (aligned to the epoch). The
/// tests send readings over up to 20 s and read one row per window; a reading processed late is
/// moved to its arrival time, so readings must not reach the window's end, or they fall in two
/// windows (a run of the kill -9 test started at 10:18:42 failed so).
fn first_reading_time() -> chrono::DateTime<chrono::Utc> {
    let base = chrono::Utc::now() + chrono::Duration::seconds(60);
    let window_end = (base.timestamp() / 600 + 1) * 600;
    if window_end - base.timestamp() >= 200 {
        base
    } else {
        chrono::DateTime::from_timestamp(window_end + 1, 0).unwrap()
    }
}

/// Closes the running query's open windows by replacing it (`Counts` -> `Counts2`): the old query's
/// windows are closed and sent.
async fn close_windows(hub: &HubHandle, query: &str) {
    hub.update_desired(AGG, json!({"query": query.replace("Counts", "Counts2")}))
        .await
        .unwrap();
}

async fn feeder(rig: &TestHub) -> ModuleClient {
    let mut identity =
        Identity::from_connection_string(&connection_string(FEEDER), Some(rig.ca_file())).unwrap();
    identity.port = rig.tls_addr.port();
    let (client, _events) = ModuleClient::connect(identity, ClientOptions::default())
        .await
        .unwrap();
    client
}

/// The next upstream message, removed from the queue.
async fn next_upstream(hub: &HubHandle) -> StoredMessage {
    let q = hub.upstream();
    let m = timeout(WAIT, q.next()).await.expect("an upstream message");
    q.ack(m.seq).await.unwrap();
    m
}

fn body(m: &StoredMessage) -> Value {
    serde_json::from_slice(&m.message.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_from_the_twin_reloads_live_and_bad_input_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let rig = start_hub(
        dir.path(),
        "SELECT deviceId, temp INTO Echo FROM temperature",
    )
    .await;
    let _agg = start_aggregator(&rig, &dir.path().join("state"));
    rig.wait_reported(AGG, |r| r["query"]["status"] == "running")
        .await;
    let feed = feeder(&rig).await;

    feed.send_output(
        "out",
        Message::json(&json!({"deviceId": "p1", "temp": 37.5})),
    )
    .await
    .unwrap();
    let m = next_upstream(&rig.handle).await;
    assert_eq!((m.module.as_str(), m.output.as_str()), (AGG, "Echo"));
    assert_eq!(body(&m), json!({"deviceId": "p1", "temp": 37.5}));

    // A query that does not parse: reported with line and column; the previous query keeps running.
    rig.handle
        .update_desired(
            AGG,
            json!({"query": "SELECT temp\nINTO Echo FROM temperature GROUP BY"}),
        )
        .await
        .unwrap();
    let reported = rig
        .wait_reported(AGG, |r| r["query"]["error"].is_string())
        .await;
    assert_eq!(reported["query"]["line"], json!(2), "{reported}");
    assert!(
        reported["query"]["column"].as_u64().unwrap() > 1,
        "{reported}"
    );
    assert_eq!(
        reported["runningQuery"],
        json!("SELECT deviceId, temp INTO Echo FROM temperature")
    );
    feed.send_output(
        "out",
        Message::json(&json!({"deviceId": "p2", "temp": 38.0})),
    )
    .await
    .unwrap();
    let m = next_upstream(&rig.handle).await;
    assert_eq!(m.output, "Echo");
    assert_eq!(body(&m)["deviceId"], json!("p2"));

    // A query nested far too deep: refused with an error (no stack overflow), the previous
    // query keeps running.
    let deep = format!(
        "SELECT temp INTO Echo FROM temperature WHERE {}temp > 0",
        "NOT ".repeat(5_000)
    );
    rig.handle
        .update_desired(AGG, json!({ "query": deep }))
        .await
        .unwrap();
    let reported = rig
        .wait_reported(AGG, |r| {
            r["query"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("levels deep"))
        })
        .await;
    assert_eq!(
        reported["runningQuery"],
        json!("SELECT deviceId, temp INTO Echo FROM temperature")
    );
    feed.send_output(
        "out",
        Message::json(&json!({"deviceId": "p4", "temp": 38.5})),
    )
    .await
    .unwrap();
    let m = next_upstream(&rig.handle).await;
    assert_eq!(body(&m)["deviceId"], json!("p4"));

    // A good query replaces it live.
    rig.handle
        .update_desired(
            AGG,
            json!({"query": "SELECT temp * 2 AS twice INTO Twice FROM temperature"}),
        )
        .await
        .unwrap();
    rig.wait_reported(AGG, |r| r["outputs"] == json!(["Twice"]))
        .await;
    feed.send_output("out", Message::json(&json!({"deviceId": "p3", "temp": 20})))
        .await
        .unwrap();
    let m = next_upstream(&rig.handle).await;
    assert_eq!(m.output, "Twice");
    assert_eq!(body(&m), json!({"twice": 40}));

    // Not JSON: to the dead-letter output, with the reason and the body.
    feed.send_output("out", Message::new("37.2 degrees"))
        .await
        .unwrap();
    let m = next_upstream(&rig.handle).await;
    assert_eq!(m.output, "deadletter");
    let dl = body(&m);
    assert!(dl["reason"].as_str().unwrap().contains("not JSON"), "{dl}");
    assert_eq!(dl["bodyText"], json!("37.2 degrees"));
    assert_eq!(dl["input"], json!("temperature"));
    feed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_open_window() {
    let dir = tempfile::tempdir().unwrap();
    let query = "SELECT Count(*) AS n, Avg(temp) AS avg INTO Counts FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(minute, 10)";
    let rig = start_hub(dir.path(), query).await;
    let state = dir.path().join("state");
    let agg = start_aggregator(&rig, &state);
    let first = rig
        .wait_reported(AGG, |r| r["query"]["status"] == "running")
        .await;
    let feed = feeder(&rig).await;

    // Events in a window that is far from closing (10 minutes, a little ahead of now).
    let start = first_reading_time();
    for i in 0..10 {
        let t = start + chrono::Duration::seconds(i);
        let m = Message::json(&json!({"temp": 36 + i, "timeCreated": t.to_rfc3339()}));
        feed.send_output("out", m).await.unwrap();
    }
    wait_all_taken(&rig.handle, Duration::from_secs(30)).await;
    drop(agg); // SIGKILL

    // Restarted on the same state folder, the window holds all ten readings; close it with a query
    // change (the old query's open windows are closed and sent).
    let _agg = start_aggregator(&rig, &state);
    // The new process has read its twin and restored the checkpoint once it reports its own start.
    wait_restarted(&rig, &first).await;
    close_windows(&rig.handle, query).await;
    let m = next_upstream(&rig.handle).await;
    assert_eq!(m.output, "Counts");
    assert_eq!(body(&m), json!({"n": 10, "avg": 40.5}));
    feed.shutdown().await;
}

/// `kill -9` under load with 10,000 open groups (one per patient): the process is killed while
/// messages stream in, restarted on the same state folder, and every window still counts every
/// message the hub delivered, none twice. The restart time (process start to the query running
/// with the restored state) is printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_with_10000_open_groups_loses_nothing() {
    const PATIENTS: usize = 10_000;
    const PER_PATIENT: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let query = "SELECT deviceId, Count(*) AS n, Sum(temp) AS s INTO Counts FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, TumblingWindow(minute, 10)";
    let rig = start_hub(dir.path(), query).await;
    let state = dir.path().join("state");
    let agg = start_aggregator(&rig, &state);
    let first = rig
        .wait_reported(AGG, |r| r["query"]["status"] == "running")
        .await;
    let feed = feeder(&rig).await;

    // every reading in one window far from closing, sent in two rounds; the kill comes in the
    // middle of the first, while readings stream in and the module works through them
    let start = first_reading_time();
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let send_round = |round: usize| {
        let (feed, sent) = (&feed, &sent);
        async move {
            for p in 0..PATIENTS {
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let t = start + chrono::Duration::milliseconds((round * PATIENTS + p) as i64);
                let m = Message::json(&json!({
                    "deviceId": format!("patient-{p:05}"),
                    "temp": 36 + (p % 3) as i64,
                    "timeCreated": t.to_rfc3339(),
                    "battery": 90,
                }));
                feed.send_output("out", m).await.unwrap();
            }
        }
    };
    // 10,000 groups open, then the kill in the middle of the second round
    send_round(0).await;
    let kill_and_restart = async {
        while sent.load(std::sync::atomic::Ordering::Relaxed) < PATIENTS + PATIENTS / 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let queued = rig.handle.stats().modules[AGG].queue_depth;
        drop(agg); // SIGKILL
        let restarted = std::time::Instant::now();
        let agg = start_aggregator(&rig, &state);
        wait_restarted(&rig, &first).await;
        (queued, restarted, restarted.elapsed(), agg)
    };
    let ((), (before_kill, restarted, restart_time, _agg)) =
        tokio::join!(send_round(1), kill_and_restart);
    wait_all_taken(&rig.handle, Duration::from_secs(120)).await;
    let drained = restarted.elapsed();
    eprintln!(
        "kill -9 with {PATIENTS} open groups, {before_kill} inputs queued for the module at the kill: \
         the query ran again (state restored) {:.2} s after the restart; every input was taken \
         {:.2} s after it",
        restart_time.as_secs_f64(),
        drained.as_secs_f64()
    );

    // close the windows with a query change; each patient's window holds both readings
    close_windows(&rig.handle, query).await;
    let mut seen = BTreeMap::new();
    while seen.len() < PATIENTS {
        let m = next_upstream(&rig.handle).await;
        assert_eq!(m.output, "Counts");
        let b = body(&m);
        let id = b["deviceId"].as_str().unwrap().to_string();
        assert!(
            seen.insert(id.clone(), b.clone()).is_none(),
            "{id} came out twice"
        );
    }
    for (id, b) in &seen {
        let p: usize = id.trim_start_matches("patient-").parse().unwrap();
        let temp = 36 + (p % 3) as i64;
        assert_eq!(b["n"], json!(PER_PATIENT), "{id}: {b}");
        assert_eq!(b["s"], json!(temp * PER_PATIENT as i64), "{id}: {b}");
    }
    feed.shutdown().await;
}

/// A full state folder (the chaos harness's disk-full scenario: the module used to exit with an
/// error, be restarted into the same full disk, and lose its place): the module stays up, says what
/// is wrong and what to do, acknowledges nothing it could not make durable (edgeHub keeps those),
/// and once there is room again acknowledges them without a restart; a `kill -9` after that loses
/// none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_holds_inputs_unacknowledged_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(disk) = SmallDisk::mount_at(&state, "1m") else {
        return;
    };
    let query = "SELECT Count(*) AS n, Sum(temp) AS s INTO Counts FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(minute, 10)";
    let rig = start_hub(dir.path(), query).await;
    let log = dir.path().join("aggregator.log");
    let mut agg = start_aggregator_logging(&rig, &state, Some(&log));
    let first = rig
        .wait_reported(AGG, |r| r["query"]["status"] == "running")
        .await;
    let feed = feeder(&rig).await;
    let start = first_reading_time();
    let mut sent = 0i64;
    let mut send = |n: i64| {
        let feed = &feed;
        let from = sent;
        sent += n;
        async move {
            for i in from..from + n {
                let t = start + chrono::Duration::milliseconds(i);
                let m = Message::json(
                    &json!({"temp": i, "timeCreated": t.to_rfc3339(), "pad": "x".repeat(200)}),
                );
                feed.send_output("out", m).await.unwrap();
            }
        }
    };
    send(20).await;
    wait_all_taken(&rig.handle, Duration::from_secs(60)).await;

    // the disk fills: inputs are delivered, processed, and not acknowledged
    let filler = disk.fill();
    send(100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = rig.handle.stats().modules[AGG].queue_depth;
    assert!(
        held > 0,
        "inputs were acknowledged while the state could not be written"
    );
    assert!(
        agg.0.try_wait().unwrap().is_none(),
        "the module exited on a full disk"
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("cannot make the processed inputs durable") && said.contains("Free space"),
        "the log says what is wrong and what to do: {said}"
    );

    // room again: every held input is acknowledged, by the same process
    std::fs::remove_file(&filler).unwrap();
    wait_all_taken(&rig.handle, Duration::from_secs(60)).await;
    assert!(agg.0.try_wait().unwrap().is_none(), "the module restarted");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("the state folder takes writes again"));

    // what was acknowledged is durable: kill -9, restart, close the window with a query change
    drop(agg);
    let _agg = start_aggregator(&rig, &state);
    wait_restarted(&rig, &first).await;
    close_windows(&rig.handle, query).await;
    let m = next_upstream(&rig.handle).await;
    assert_eq!(m.output, "Counts");
    assert_eq!(
        body(&m),
        json!({"n": sent, "s": (0..sent).sum::<i64>()}),
        "every input counted once ({held} were held while the disk was full)"
    );
    feed.shutdown().await;
}

/// Inputs that edgeHub (re)delivers before the twin's query is applied, as after a restart or a
/// `kill -9`, are held until the query is in force: none is dead-lettered as "no query is running".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_delivered_before_the_query_is_applied_are_held_not_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let rig = start_hub(dir.path(), "SELECT temp INTO Echo FROM temperature").await;
    let feed = feeder(&rig).await;
    // The module is down: the hub stores its inputs and delivers them the moment it subscribes.
    const N: i64 = 40;
    for i in 0..N {
        feed.send_output("out", Message::json(&json!({"temp": i})))
            .await
            .unwrap();
    }
    let _agg = start_aggregator(&rig, &dir.path().join("state"));
    let mut temps = Vec::new();
    while temps.len() < N as usize {
        let m = next_upstream(&rig.handle).await;
        assert_eq!(m.output, "Echo", "{}", body(&m));
        temps.push(body(&m)["temp"].as_i64().unwrap());
    }
    assert_eq!(
        temps,
        (0..N).collect::<Vec<_>>(),
        "every input once, in order"
    );
    rig.wait_reported(AGG, |r| r["query"]["status"] == "running")
        .await;
    // and each input is acknowledged once its effect is checkpointed
    wait_all_taken(&rig.handle, Duration::from_secs(10)).await;
    feed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_data_from_a_file_and_the_twin_reloads_and_bad_files_keep_the_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("patients.csv");
    std::fs::write(&file, "deviceId,feverC\np1,37.5\n").unwrap();
    // CSV values are text (as in ASA): the query casts the threshold
    let query = "SELECT s.deviceId, s.temp, TRY_CAST(r.feverC AS float) AS feverC INTO Fever
        FROM temperature s JOIN patients r ON s.deviceId = r.deviceId
        WHERE s.temp >= TRY_CAST(r.feverC AS float)";
    let rig = start_hub(dir.path(), "SELECT * INTO o FROM temperature").await;
    rig.handle
        .update_desired(
            AGG,
            json!({"query": query, "referenceData": {"patients": {"path": file}}}),
        )
        .await
        .unwrap();
    let _agg = start_aggregator(&rig, &dir.path().join("state"));
    rig.wait_reported(AGG, |r| r["referenceData"]["patients"]["rows"] == json!(1))
        .await;
    let feed = feeder(&rig).await;
    let send = |d: &'static str, t: f64| {
        let feed = &feed;
        async move {
            feed.send_output("out", Message::json(&json!({"deviceId": d, "temp": t})))
                .await
                .unwrap();
        }
    };
    send("p1", 37.6).await;
    let m = next_upstream(&rig.handle).await;
    assert_eq!(m.output, "Fever");
    assert_eq!(
        body(&m),
        json!({"deviceId": "p1", "temp": 37.6, "feverC": 37.5})
    );

    // a malformed file: reported, the previous rows stay in use
    std::fs::write(&file, "deviceId,feverC\np1,37.5,extra\n").unwrap();
    let r = rig
        .wait_reported(AGG, |r| r["referenceData"]["patients"]["error"].is_string())
        .await;
    assert!(
        r["referenceData"]["patients"]["error"]
            .as_str()
            .unwrap()
            .contains("CSV row 2"),
        "{r}"
    );
    send("p1", 37.7).await;
    assert_eq!(body(&next_upstream(&rig.handle).await)["temp"], json!(37.7));

    // fixed and extended: reloaded without a restart
    std::fs::write(&file, "deviceId,feverC\np1,37.5\np2,38.5\n").unwrap();
    rig.wait_reported(AGG, |r| r["referenceData"]["patients"]["rows"] == json!(2))
        .await;
    send("p2", 38.4).await; // below p2's threshold
    send("p2", 38.6).await;
    let m = next_upstream(&rig.handle).await;
    assert_eq!(
        body(&m),
        json!({"deviceId": "p2", "temp": 38.6, "feverC": 38.5})
    );

    // inline in the twin instead of the file
    rig.handle
        .update_desired(
            AGG,
            json!({"referenceData": {"patients": {"path": null, "rows": [{"deviceId": "p3", "feverC": 36.0}]}}}),
        )
        .await
        .unwrap();
    rig.wait_reported(AGG, |r| {
        r["referenceData"]["patients"]["source"] == json!("twin")
    })
    .await;
    send("p3", 36.5).await;
    assert_eq!(
        body(&next_upstream(&rig.handle).await)["deviceId"],
        json!("p3")
    );
    feed.shutdown().await;
}
