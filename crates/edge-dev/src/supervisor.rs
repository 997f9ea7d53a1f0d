//! The supervisor: edgeAgent's part of `edge-dev`. It runs each module of the manifest as a local
//! process, in `startupOrder`, restarts it as its `restartPolicy` says (with exponential back-off), prefixes
//! its output with the module name, and stops every module with SIGTERM (then SIGKILL after a grace
//! period) when the runtime stops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_manifest::RestartPolicy;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How to start one module.
#[derive(Debug, Clone)]
pub struct ModuleProcess {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub restart_policy: RestartPolicy,
    /// Lower starts first; `None` starts last (edgeAgent's default is 4294967295).
    pub startup_order: Option<u32>,
}

/// Restart back-off. edgeAgent waits 10 s doubling to 5 min; a development runtime restarts sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait after a crash. Default 1 s.
    pub initial: Duration,
    /// Longest wait. Default 60 s.
    pub max: Duration,
    /// A module that ran this long is considered healthy again and its back-off is reset. Default 60 s.
    pub healthy_after: Duration,
    /// Grace period between SIGTERM and SIGKILL at stop. Default 10 s (docker stop's default).
    pub stop_grace: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// What the supervisor knows of a module, for the console, metrics and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Set when the module will not be started again (policy `never`, or it could not be started).
    pub given_up: Option<String>,
}

pub type StatusMap = Arc<Mutex<BTreeMap<String, ModuleStatus>>>;

/// Whether `policy` restarts a module that exited with `success`.
pub fn should_restart(policy: RestartPolicy, success: bool) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure | RestartPolicy::OnUnhealthy => !success,
        RestartPolicy::Always => true,
    }
}

/// The wait before restart number `restarts` (0-based).
pub fn backoff_delay(b: &Backoff, restarts: u32) -> Duration {
    let factor = 1u32.checked_shl(restarts.min(20)).unwrap_or(u32::MAX);
    b.initial.saturating_mul(factor).min(b.max)
}

/// Runs `modules` until `stop` becomes true, then stops them all. Returns when every module has exited.
pub async fn supervise(
    mut modules: Vec<ModuleProcess>,
    backoff: Backoff,
    status: StatusMap,
    stop: watch::Receiver<bool>,
) {
    modules.sort_by_key(|m| (m.startup_order.unwrap_or(u32::MAX), m.name.clone()));
    let mut tasks = Vec::new();
    let mut last_order = None;
    for m in modules {
        if *stop.borrow() {
            break;
        }
        // Like edgeAgent, start the next startupOrder group only after the previous one was started.
        if last_order.is_some() && last_order != Some(m.startup_order) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        last_order = Some(m.startup_order);
        status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.name.clone(), ModuleStatus::default());
        tasks.push(tokio::spawn(run_one(
            m,
            backoff,
            status.clone(),
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Resolves once `stop` is true (or its sender is gone). The guard `wait_for` returns is not `Send`, so it
/// is dropped here, before any await of the caller.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn set_status(status: &StatusMap, name: &str, f: impl FnOnce(&mut ModuleStatus)) {
    let mut map = status.lock().unwrap_or_else(|p| p.into_inner());
    f(map.entry(name.to_string()).or_default());
}

async fn run_one(
    m: ModuleProcess,
    backoff: Backoff,
    status: StatusMap,
    mut stop: watch::Receiver<bool>,
) {
    let mut restarts: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn(&m) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot start {}: {e}", m.program.display());
                tracing::error!(module = %m.name, "{why}; build it with `cargo build --workspace --bins`, or run it yourself with --external {}", m.name);
                set_status(&status, &m.name, |s| {
                    s.running = false;
                    s.given_up = Some(why);
                });
                return;
            }
        };
        let pid = child.id();
        tracing::info!(module = %m.name, pid, "module started");
        set_status(&status, &m.name, |s| {
            s.running = true;
            s.pid = pid;
        });
        let exit = tokio::select! {
            r = child.wait() => r,
            _ = stopped(&mut stop) => {
                terminate(&m.name, &mut child, backoff.stop_grace).await;
                set_status(&status, &m.name, |s| { s.running = false; s.pid = None; s.last_exit = Some("stopped".into()); });
                return;
            }
        };
        let (success, what) = match &exit {
            Ok(st) if st.success() => (true, "exited with status 0".to_string()),
            Ok(st) => (false, format!("exited with {st}")),
            Err(e) => (false, format!("could not be waited for: {e}")),
        };
        if started.elapsed() >= backoff.healthy_after {
            restarts = 0;
        }
        let again = should_restart(m.restart_policy, success);
        set_status(&status, &m.name, |s| {
            s.running = false;
            s.pid = None;
            s.last_exit = Some(what.clone());
            if !again {
                s.given_up = Some(format!(
                    "restartPolicy {:?} and the module {what}",
                    m.restart_policy
                ));
            }
        });
        if !again {
            tracing::warn!(module = %m.name, "module {what}; restartPolicy {:?} does not restart it", m.restart_policy);
            return;
        }
        let delay = backoff_delay(&backoff, restarts);
        tracing::warn!(module = %m.name, "module {what}; restarting in {delay:?} (restart {})", restarts + 1);
        restarts += 1;
        set_status(&status, &m.name, |s| s.restarts += 1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

fn spawn(m: &ModuleProcess) -> std::io::Result<Child> {
    std::fs::create_dir_all(&m.working_dir)?;
    let mut cmd = Command::new(&m.program);
    cmd.args(&m.args)
        .envs(&m.env)
        .current_dir(&m.working_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(m.name.clone(), out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(m.name.clone(), err));
    }
    Ok(child)
}

/// Copies a module's output to ours, each line prefixed with the module name (like `iotedge logs`).
async fn forward_lines(name: String, r: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{name:>18} | {line}");
    }
}

async fn terminate(name: &str, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            tracing::warn!(module = %name, error = %e, "SIGTERM failed");
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(st)) => tracing::info!(module = %name, "module stopped ({st})"),
        Ok(Err(e)) => {
            tracing::warn!(module = %name, error = %e, "module stop could not be waited for")
        }
        Err(_) => {
            tracing::warn!(module = %name, "module did not stop within {grace:?} of SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_match_edge_agent() {
        assert!(!should_restart(RestartPolicy::Never, false));
        assert!(!should_restart(RestartPolicy::OnFailure, true));
        assert!(should_restart(RestartPolicy::OnFailure, false));
        assert!(should_restart(RestartPolicy::OnUnhealthy, false));
        assert!(should_restart(RestartPolicy::Always, true));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Backoff::default();
        assert_eq!(backoff_delay(&b, 0), Duration::from_secs(1));
        assert_eq!(backoff_delay(&b, 1), Duration::from_secs(2));
        assert_eq!(backoff_delay(&b, 5), Duration::from_secs(32));
        assert_eq!(backoff_delay(&b, 6), Duration::from_secs(60));
        assert_eq!(backoff_delay(&b, 1000), Duration::from_secs(60));
    }

    fn shell(
        name: &str,
        script: &str,
        policy: RestartPolicy,
        dir: &std::path::Path,
    ) -> ModuleProcess {
        ModuleProcess {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            working_dir: dir.to_path_buf(),
            restart_policy: policy,
            startup_order: None,
        }
    }

    #[tokio::test]
    async fn crashing_module_is_restarted_and_stop_ends_everything() {
        let dir = tempfile::tempdir().unwrap();
        let fast = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            ..Backoff::default()
        };
        let status: StatusMap = Arc::default();
        let (tx, rx) = watch::channel(false);
        let mods = vec![
            shell(
                "crasher",
                "echo run >> runs; exit 3",
                RestartPolicy::Always,
                dir.path(),
            ),
            shell(
                "sleeper",
                "exec sleep 30",
                RestartPolicy::Always,
                dir.path(),
            ),
            shell("once", "exit 0", RestartPolicy::OnFailure, dir.path()),
        ];
        let sup = tokio::spawn(supervise(mods, fast, status.clone(), rx));
        // Wait (bounded) until the crasher has been restarted a few times.
        for _ in 0..500 {
            let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap_or_default();
            if runs.lines().count() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap_or_default();
        assert!(
            runs.lines().count() >= 3,
            "crasher ran {} times",
            runs.lines().count()
        );
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), sup)
            .await
            .expect("supervisor stops")
            .unwrap();
        let st = status.lock().unwrap().clone();
        assert!(st["crasher"].restarts >= 2, "{st:?}");
        assert!(!st["sleeper"].running);
        assert_eq!(st["sleeper"].last_exit.as_deref(), Some("stopped"));
        assert!(st["once"].given_up.is_some(), "{st:?}");
        assert_eq!(st["once"].restarts, 0);
    }

    #[tokio::test]
    async fn a_missing_binary_is_reported_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let status: StatusMap = Arc::default();
        let (_tx, rx) = watch::channel(false);
        let mut m = shell("ghost", "", RestartPolicy::Always, dir.path());
        m.program = dir.path().join("no-such-binary");
        tokio::time::timeout(
            Duration::from_secs(10),
            supervise(vec![m], Backoff::default(), status.clone(), rx),
        )
        .await
        .expect("returns");
        let st = status.lock().unwrap().clone();
        assert!(
            st["ghost"]
                .given_up
                .as_deref()
                .unwrap_or("")
                .contains("cannot start"),
            "{st:?}"
        );
    }
}
