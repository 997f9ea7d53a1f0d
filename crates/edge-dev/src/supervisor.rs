//! The supervisor: edgeAgent's part of `edge-dev`. It runs each module of the manifest as a local
//! process, in `startupOrder`, restarts it as its `restartPolicy` says (with exponential back-off), prefixes
//! its output with the module name, and stops every module with SIGTERM (then SIGKILL after a grace
//! period) when the runtime stops.
//!
//! Module processes never outlive the runtime. Each runs in its own process group (so a stop reaches
//! whatever it started, and a Ctrl-C in the terminal reaches only `edge-dev`, which stops the modules in
//! order), and on Linux with a parent-death signal: if `edge-dev` is killed (`kill -9`, an OOM kill, a
//! crash), the kernel kills its modules at once. As a second line, each running module has a pid file
//! (pid and the process's start time, so a reused pid is never mistaken for it) under the data folder;
//! a runtime that starts and finds one whose process still runs stops it ([`stop_strays`]) before it
//! starts anything, so a stray can neither hold a port (1889) nor compete for a module's hub session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// Where the running process is recorded (`<pid> <start time>`), for [`stop_strays`]; `None`: not
    /// recorded.
    pub pid_file: Option<PathBuf>,
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
        if let (Some(file), Some(pid)) = (&m.pid_file, pid) {
            record_pid(file, pid, &m.name);
        }
        set_status(&status, &m.name, |s| {
            s.running = true;
            s.pid = pid;
        });
        let exit = tokio::select! {
            r = child.wait() => r,
            _ = stopped(&mut stop) => {
                terminate(&m.name, &mut child, backoff.stop_grace).await;
                forget_pid(m.pid_file.as_deref());
                set_status(&status, &m.name, |s| { s.running = false; s.pid = None; s.last_exit = Some("stopped".into()); });
                return;
            }
        };
        forget_pid(m.pid_file.as_deref());
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
        .kill_on_drop(true)
        // its own process group: stops reach its children; the terminal's Ctrl-C reaches only us
        .process_group(0);
    die_with_parent(&mut cmd);
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

/// Asks the kernel to SIGKILL the module when the thread that started it (a runtime worker thread,
/// which lives as long as `edge-dev`) ends, e.g. because `edge-dev` was killed. If `edge-dev` is already
/// gone by the time the child runs, the child does not start the module at all.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec. It makes two system calls (prctl,
    // getppid), both async-signal-safe, and allocates nothing (an Errno converts to an io::Error
    // without allocating), as code between fork and exec must.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

async fn terminate(name: &str, child: &mut Child, grace: Duration) {
    // the module's process group: the module and whatever it started
    let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    if let Some(pgid) = group {
        if let Err(e) = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM) {
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
            if let Some(pgid) = group {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.kill().await;
        }
    }
    // anything the module started and left behind goes with it
    if let Some(pgid) = group {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Writes `<pid> <start time>` to `file` (a failure only costs the stray clean-up; it is logged).
fn record_pid(file: &Path, pid: u32, name: &str) {
    let Some(start) = process_start_time(pid) else {
        return;
    };
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(file, format!("{pid} {start}\n")));
    if let Err(e) = written {
        tracing::warn!(module = %name, file = %file.display(), error = %e,
            "cannot record the module's pid; if edge-dev is killed, a later run cannot clean up after it");
    }
}

fn forget_pid(file: Option<&Path>) {
    if let Some(f) = file {
        let _ = std::fs::remove_file(f);
    }
}

/// What `/proc/<pid>/stat` says of a process: its state, its process group, and its start time (clock
/// ticks since boot).
struct ProcStat {
    state: char,
    pgrp: u32,
    start: u64,
}

impl ProcStat {
    fn read(pid: u32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // the command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(ProcStat {
            state: fields.first()?.chars().next()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }

    /// Neither a zombie nor dead.
    fn alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

fn process_start_time(pid: u32) -> Option<u64> {
    ProcStat::read(pid).map(|s| s.start)
}

/// Processes of process group `pgid` that started no earlier than `start` (the group leader's start
/// time): what a module started, still running after the module itself died.
fn group_members(pgid: u32, start: u64) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            ProcStat::read(pid).is_some_and(|s| s.alive() && s.pgrp == pgid && s.start >= start)
        })
        .collect()
}

/// True while the process recorded as `(pid, start)` exists and is not a zombie.
fn still_running(pid: u32, start: u64) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.start == start && s.alive())
}

/// Stops the module processes that an earlier `edge-dev` left running (one that was killed before it
/// could stop them, on a system without the parent-death signal), as the pid files in `run_dir` record
/// them, and removes the pid files. A file whose process is gone, or whose pid now belongs to another
/// process (the start time differs), is just removed. Returns the names of the modules stopped. Waits
/// at most about 5 s for each.
pub fn stop_strays(run_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut stopped = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        let recorded = std::fs::read_to_string(&path).ok().and_then(|t| {
            let mut it = t.split_whitespace();
            Some((
                it.next()?.parse::<u32>().ok()?,
                it.next()?.parse::<u64>().ok()?,
            ))
        });
        if let Some((pid, start)) = recorded {
            // what the module started may outlive it (the parent-death signal reaches only the module)
            let orphans = if pid > 1 {
                group_members(pid, start)
            } else {
                Vec::new()
            };
            for o in orphans.iter().filter(|&&o| o != pid) {
                tracing::warn!(module = %name, pid = o, "a process the module started outlived it; stopping it");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*o as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if pid > 1 && still_running(pid, start) {
                tracing::warn!(module = %name, pid,
                    "module process left running by an earlier edge-dev that did not stop cleanly (killed?); stopping it and its process group");
                let p = nix::unistd::Pid::from_raw(pid as i32);
                // it leads its own process group (process_group(0) at spawn)
                let _ = nix::sys::signal::killpg(p, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while still_running(pid, start) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if still_running(pid, start) {
                    tracing::error!(module = %name, pid, "the stray module process did not stop; kill it by hand (`kill -9 {pid}`)");
                } else {
                    stopped.push(name);
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    stopped
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
            pid_file: Some(dir.join("run").join(format!("{name}.pid"))),
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

    #[test]
    fn strays_of_an_earlier_run_are_stopped_and_reused_pids_are_left_alone() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        // a module an earlier edge-dev started (own process group) and did not stop
        let mut stray = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        record_pid(
            &run.join("MqttServerModule.pid"),
            stray.id(),
            "MqttServerModule",
        );
        // a pid file whose pid now belongs to another process (another start time): not ours to kill
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(run.join("Other.pid"), format!("{} 1\n", other.id())).unwrap();
        // and one whose process is long gone
        std::fs::write(run.join("Gone.pid"), "999999999 5\n").unwrap();

        let stopped = stop_strays(&run);
        assert_eq!(stopped, vec!["MqttServerModule".to_string()]);
        let st = stray.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(9),
            "killed"
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "the other process runs on"
        );
        other.kill().unwrap();
        let _ = other.wait();
        assert_eq!(
            std::fs::read_dir(&run).unwrap().count(),
            0,
            "pid files removed"
        );
    }

    #[tokio::test]
    async fn a_running_module_is_recorded_and_forgotten_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let status: StatusMap = Arc::default();
        let (tx, rx) = watch::channel(false);
        let m = shell("rec", "exec sleep 30", RestartPolicy::Always, dir.path());
        let file = m.pid_file.clone().unwrap();
        let sup = tokio::spawn(supervise(vec![m], Backoff::default(), status.clone(), rx));
        for _ in 0..200 {
            if file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let pid: u32 = text.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(status.lock().unwrap()["rec"].pid, Some(pid));
        // its own process group
        assert_eq!(
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap(),
            nix::unistd::Pid::from_raw(pid as i32)
        );
        tx.send(true).unwrap();
        sup.await.unwrap();
        assert!(!file.exists(), "pid file removed at stop");
    }

    #[test]
    fn what_a_dead_module_started_is_stopped_too() {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        // a wrapper-script module: its child runs on in the module's process group
        let mut wrapper = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        record_pid(&run.join("Wrapped.pid"), wrapper.id(), "Wrapped");
        let mut line = String::new();
        std::io::BufReader::new(wrapper.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let child: u32 = line.trim().parse().unwrap();
        // the module dies (as the parent-death signal would kill it); its child does not
        wrapper.kill().unwrap();
        let _ = wrapper.wait();
        assert!(ProcStat::read(child).is_some_and(|s| s.alive()));
        stop_strays(&run);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ProcStat::read(child).is_some_and(|s| s.alive()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !ProcStat::read(child).is_some_and(|s| s.alive()),
            "the orphan was stopped"
        );
    }
}
