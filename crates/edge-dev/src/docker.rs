//! `edge-dev up --docker`: edgeAgent's part with real containers. Each module of the deployment runs from
//! its image on a user-defined bridge network (by default `azure-iot-edge`, the real runtime's name), with
//! the container named after the module so that `MqttServerModule` resolves from the other modules, its
//! `createOptions` applied (ports, binds, env, ...), the edgeAgent environment (`IOTEDGE_*`) and the
//! workload socket bind-mounted at `/var/run/iotedge/workload.sock`. The hub stays the host's `edge-dev`
//! process; containers reach it as `edgeHub` through `--add-host edgeHub:<network gateway>`.
//!
//! Parts: [`DockerOptions`]; [`prepare`] (network); [`run_args`] (pure: a module and its createOptions to
//! `docker run` arguments); [`supervise`] (start in startupOrder, follow logs, report status, stop and remove
//! everything it created). The `docker` CLI is driven through `tokio::process`, no SDK.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use edge_manifest::RestartPolicy;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::supervisor::{ModuleStatus, StatusMap};
use crate::EdgeDevError;

/// Where the workload socket appears inside each container (edgeAgent's default `IOTEDGE_WORKLOADURI`).
pub const CONTAINER_WORKLOAD_SOCKET: &str = "/var/run/iotedge/workload.sock";
/// Label put on the containers and the network edge-dev creates; its value is the network name.
pub const LABEL: &str = "edge-dev.network";

/// Options of the docker mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptions {
    /// The docker CLI. Default `docker`.
    pub program: PathBuf,
    /// The user-defined bridge network; created (and removed at stop) if missing. Default `azure-iot-edge`.
    pub network: String,
    /// Seconds `docker stop` waits between SIGTERM and SIGKILL. Default 10 (docker's own default).
    pub stop_grace: Duration,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            program: PathBuf::from("docker"),
            network: "azure-iot-edge".into(),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// The network the modules run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerNetwork {
    pub name: String,
    /// The bridge's address on the host: the hub listens here and `edgeHub` resolves to it in containers.
    pub gateway: IpAddr,
    /// Whether edge-dev created it (and so removes it at stop).
    pub created: bool,
}

/// One module to run as a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Module name = container name = host name on the network.
    pub name: String,
    pub image: String,
    /// The module's environment (manifest `env` and the `IOTEDGE_*` variables); added after createOptions' Env.
    pub env: BTreeMap<String, String>,
    /// The deployment's `createOptions` (Docker Engine API create body).
    pub create_options: Value,
    pub restart_policy: RestartPolicy,
    pub startup_order: Option<u32>,
}

impl ContainerSpec {
    /// The container of module `name`: its image and createOptions from the deployment, and the environment
    /// edgeAgent gives a module (its `env`, then `IOTEDGE_*` with the workload socket inside the container and
    /// `edgeHub` as the gateway host name at `hub_port`).
    pub fn for_module(
        name: &str,
        spec: &edge_manifest::ModuleSpec,
        generation_id: &str,
        ids: &crate::identities::Identities,
        hub_port: u16,
    ) -> ContainerSpec {
        let mut env = spec.env.clone();
        let iotedge = [
            (
                "IOTEDGE_WORKLOADURI",
                format!("unix://{CONTAINER_WORKLOAD_SOCKET}"),
            ),
            ("IOTEDGE_AUTHSCHEME", "sasToken".to_string()),
            ("IOTEDGE_MODULEGENERATIONID", generation_id.to_string()),
            ("IOTEDGE_IOTHUBHOSTNAME", ids.iothub_hostname.clone()),
            ("IOTEDGE_GATEWAYHOSTNAME", "edgeHub".to_string()),
            ("IOTEDGE_GATEWAYPORT", hub_port.to_string()),
            ("IOTEDGE_DEVICEID", ids.device_id.clone()),
            ("IOTEDGE_MODULEID", name.to_string()),
            (
                "IOTEDGE_APIVERSION",
                crate::up::WORKLOAD_API_VERSION.to_string(),
            ),
        ];
        for (k, v) in iotedge {
            env.insert(k.to_string(), v);
        }
        for k in ["RUST_LOG", "RUST_BACKTRACE", "TZ"] {
            if let Ok(v) = std::env::var(k) {
                env.entry(k.to_string()).or_insert(v);
            }
        }
        ContainerSpec {
            name: name.to_string(),
            image: spec.image.clone(),
            env,
            create_options: spec.create_options.clone(),
            restart_policy: spec.restart_policy,
            startup_order: spec.startup_order,
        }
    }
}

/// Runs the docker CLI with `args` and returns its standard output, or an error with its standard error.
async fn docker(
    program: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<String, EdgeDevError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{} {}", program.display(), args.join(" "));
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(EdgeDevError::Config(format!(
            "cannot run `{what}` ({e}); --docker needs the docker CLI and a running Docker engine"
        )))
        }
        Err(_) => {
            return Err(EdgeDevError::Config(format!(
                "`{what}` did not finish within {timeout:?}; is the Docker engine healthy?"
            )))
        }
    };
    if !out.status.success() {
        return Err(EdgeDevError::Config(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn s(v: &str) -> String {
    v.to_string()
}

const SHORT: Duration = Duration::from_secs(60);

/// Checks the engine and creates the network if it does not exist yet.
pub async fn prepare(opts: &DockerOptions) -> Result<DockerNetwork, EdgeDevError> {
    docker(
        &opts.program,
        &[s("version"), s("--format"), s("{{.Server.Version}}")],
        SHORT,
    )
    .await?;
    // The label tells a network edge-dev made (also one left by an edge-dev that was killed) from the user's.
    let inspect = [
        s("network"),
        s("inspect"),
        s("-f"),
        format!("{{{{index .Labels \"{LABEL}\"}}}} {{{{range .IPAM.Config}}}}{{{{.Gateway}}}} {{{{end}}}}"),
        opts.network.clone(),
    ];
    let (text, created) = match docker(&opts.program, &inspect, SHORT).await {
        Ok(t) => {
            let ours = t.split_whitespace().next() == Some(opts.network.as_str());
            (t, ours)
        }
        Err(_) => {
            docker(
                &opts.program,
                &[
                    s("network"),
                    s("create"),
                    s("--driver"),
                    s("bridge"),
                    s("--label"),
                    format!("{LABEL}={}", opts.network),
                    opts.network.clone(),
                ],
                SHORT,
            )
            .await?;
            (docker(&opts.program, &inspect, SHORT).await?, true)
        }
    };
    let gateway = text
        .split_whitespace()
        .filter_map(|g| g.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)
        .ok_or_else(|| {
            EdgeDevError::Config(format!(
                "the docker network {} has no IPv4 gateway; use a bridge network with IPv4",
                opts.network
            ))
        })?;
    Ok(DockerNetwork {
        name: opts.network.clone(),
        gateway,
        created,
    })
}

/// Where the hub listens in docker mode: on the network's gateway when the given address is a loopback one
/// (containers cannot reach the host's loopback), else where the user said.
pub fn hub_listen(given: SocketAddr, network: &DockerNetwork) -> SocketAddr {
    if given.ip().is_loopback() {
        SocketAddr::new(network.gateway, given.port())
    } else {
        given
    }
}

/// docker's `--restart` for an edgeAgent restart policy (docker has no health-based restart).
pub fn restart_flag(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Never => "no",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::OnUnhealthy | RestartPolicy::Always => "always",
    }
}

fn bad(module: &str, key: &str, why: &str) -> EdgeDevError {
    EdgeDevError::Config(format!("module {module}: createOptions {key}: {why}"))
}

fn str_list<'a>(module: &str, key: &str, v: &'a Value) -> Result<Vec<&'a str>, EdgeDevError> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| bad(module, key, "must be a list of strings"))
            })
            .collect(),
        Value::String(t) => Ok(vec![t.as_str()]),
        Value::Null => Ok(Vec::new()),
        _ => Err(bad(module, key, "must be a list of strings")),
    }
}

/// The `docker run` arguments (after `run`) for one module: the network, name and alias, `edgeHub`, the
/// workload socket, labels, restart policy, `createOptions` mapped to flags, the environment, the image and
/// its command. Fails on a createOptions key it cannot express, naming it.
pub fn run_args(
    spec: &ContainerSpec,
    network: &DockerNetwork,
    socket: &Path,
) -> Result<Vec<String>, EdgeDevError> {
    let m = spec.name.as_str();
    let mut a = vec![s("-d"), s("--name"), spec.name.clone()];
    let mut network_mode = network.name.clone();
    let mut env: Vec<String> = Vec::new();
    let mut entrypoint: Vec<String> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    let mut flags: Vec<String> = Vec::new();
    let empty = serde_json::Map::new();
    let co = match &spec.create_options {
        Value::Object(o) => o,
        Value::Null => &empty,
        _ => return Err(bad(m, "(top level)", "must be a JSON object")),
    };
    for (k, v) in co {
        match k.as_str() {
            "Env" => env.extend(str_list(m, k, v)?.into_iter().map(String::from)),
            "Cmd" => cmd = str_list(m, k, v)?.into_iter().map(String::from).collect(),
            "Entrypoint" => entrypoint = str_list(m, k, v)?.into_iter().map(String::from).collect(),
            "User" | "WorkingDir" | "Hostname" => {
                let t = v.as_str().ok_or_else(|| bad(m, k, "must be a string"))?;
                let flag = match k.as_str() {
                    "User" => "--user",
                    "WorkingDir" => "--workdir",
                    _ => "--hostname",
                };
                flags.extend([s(flag), s(t)]);
            }
            "Labels" => {
                for (lk, lv) in v.as_object().ok_or_else(|| bad(m, k, "must be an object"))? {
                    flags.extend([s("--label"), format!("{lk}={}", lv.as_str().unwrap_or_default())]);
                }
            }
            "ExposedPorts" => {
                for port in v.as_object().ok_or_else(|| bad(m, k, "must be an object like {\"1889/tcp\":{}}"))?.keys() {
                    flags.extend([s("--expose"), port.clone()]);
                }
            }
            "HostConfig" => {
                let hc = v.as_object().ok_or_else(|| bad(m, k, "must be an object"))?;
                for (hk, hv) in hc {
                    let key = format!("HostConfig.{hk}");
                    match hk.as_str() {
                        "PortBindings" => {
                            let ports = hv.as_object().ok_or_else(|| bad(m, &key, "must be an object"))?;
                            for (port, binds) in ports {
                                let list = binds.as_array().ok_or_else(|| bad(m, &key, "each port needs a list of {HostIp, HostPort}"))?;
                                for b in list {
                                    let ip = b.get("HostIp").and_then(Value::as_str).unwrap_or("");
                                    let hp = b.get("HostPort").and_then(Value::as_str).unwrap_or("");
                                    let spec = match (ip.is_empty(), hp.is_empty()) {
                                        (true, true) => port.clone(),
                                        (true, false) => format!("{hp}:{port}"),
                                        (false, _) => format!("{ip}:{hp}:{port}"),
                                    };
                                    flags.extend([s("-p"), spec]);
                                }
                            }
                        }
                        "Binds" => {
                            for b in str_list(m, &key, hv)? {
                                flags.extend([s("-v"), s(b)]);
                            }
                        }
                        "Mounts" => {
                            for mt in hv.as_array().ok_or_else(|| bad(m, &key, "must be a list"))? {
                                let get = |f: &str| mt.get(f).and_then(Value::as_str).unwrap_or("");
                                let mut text = format!("type={},source={},target={}", get("Type"), get("Source"), get("Target"));
                                if mt.get("ReadOnly").and_then(Value::as_bool) == Some(true) {
                                    text.push_str(",readonly");
                                }
                                flags.extend([s("--mount"), text]);
                            }
                        }
                        "Devices" => {
                            for d in hv.as_array().ok_or_else(|| bad(m, &key, "must be a list"))? {
                                let get = |f: &str| d.get(f).and_then(Value::as_str).unwrap_or("");
                                let inside = if get("PathInContainer").is_empty() { get("PathOnHost") } else { get("PathInContainer") };
                                let perms = if get("CgroupPermissions").is_empty() { "rwm" } else { get("CgroupPermissions") };
                                flags.extend([s("--device"), format!("{}:{inside}:{perms}", get("PathOnHost"))]);
                            }
                        }
                        "Privileged" => {
                            if hv.as_bool() == Some(true) {
                                flags.push(s("--privileged"));
                            }
                        }
                        "CapAdd" | "CapDrop" => {
                            let flag = if hk == "CapAdd" { "--cap-add" } else { "--cap-drop" };
                            for c in str_list(m, &key, hv)? {
                                flags.extend([s(flag), s(c)]);
                            }
                        }
                        "ExtraHosts" => {
                            for h in str_list(m, &key, hv)? {
                                flags.extend([s("--add-host"), s(h)]);
                            }
                        }
                        "Memory" | "MemorySwap" | "NanoCpus" => {
                            let n = hv.as_u64().ok_or_else(|| bad(m, &key, "must be a whole number"))?;
                            let (flag, val) = match hk.as_str() {
                                "Memory" => ("--memory", format!("{n}b")),
                                "MemorySwap" => ("--memory-swap", format!("{n}b")),
                                _ => ("--cpus", format!("{}", n as f64 / 1e9)),
                            };
                            flags.extend([s(flag), val]);
                        }
                        "LogConfig" => {
                            if let Some(t) = hv.get("Type").and_then(Value::as_str) {
                                flags.extend([s("--log-driver"), s(t)]);
                            }
                            if let Some(c) = hv.get("Config").and_then(Value::as_object) {
                                for (ck, cv) in c {
                                    flags.extend([s("--log-opt"), format!("{ck}={}", cv.as_str().unwrap_or_default())]);
                                }
                            }
                        }
                        "NetworkMode" => {
                            network_mode = hv.as_str().ok_or_else(|| bad(m, &key, "must be a string"))?.to_string();
                        }
                        // edgeAgent owns restarts; docker's policy comes from restartPolicy below.
                        "RestartPolicy" => {}
                        _ => {
                            return Err(bad(
                                m,
                                &key,
                                "edge-dev --docker does not apply this option; run the module yourself with --external, or drop the option for local runs",
                            ))
                        }
                    }
                }
            }
            // Network attachments are edge-dev's (one user-defined network, like edgeAgent's).
            "NetworkingConfig" => {}
            _ => {
                return Err(bad(
                    m,
                    k,
                    "edge-dev --docker does not apply this option; run the module yourself with --external, or drop the option for local runs",
                ))
            }
        }
    }
    a.extend([s("--network"), network_mode.clone()]);
    if network_mode == network.name {
        a.extend([s("--network-alias"), spec.name.clone()]);
    }
    a.extend([s("--add-host"), format!("edgeHub:{}", network.gateway)]);
    a.extend([
        s("-v"),
        format!("{}:{CONTAINER_WORKLOAD_SOCKET}", socket.display()),
    ]);
    a.extend([s("--label"), format!("{LABEL}={}", network.name)]);
    a.extend([s("--restart"), s(restart_flag(spec.restart_policy))]);
    a.extend(flags);
    for e in env {
        a.extend([s("-e"), e]);
    }
    for (k, v) in &spec.env {
        a.extend([s("-e"), format!("{k}={v}")]);
    }
    if let Some((first, rest)) = entrypoint.split_first() {
        a.extend([s("--entrypoint"), first.clone()]);
        a.push(spec.image.clone());
        a.extend(rest.iter().cloned());
    } else {
        a.push(spec.image.clone());
    }
    a.extend(cmd);
    Ok(a)
}

/// Removes a container of `name` left by an earlier edge-dev on this network; refuses to touch one that
/// edge-dev did not create.
async fn remove_stale(program: &Path, name: &str, network: &str) -> Result<(), EdgeDevError> {
    let label = format!("{{{{index .Config.Labels \"{LABEL}\"}}}}");
    let found = match docker(
        program,
        &[s("container"), s("inspect"), s("-f"), label, s(name)],
        SHORT,
    )
    .await
    {
        Ok(v) => v,
        Err(_) => return Ok(()), // no such container
    };
    if found.trim() != network {
        return Err(EdgeDevError::Config(format!(
            "a container named {name} exists that this edge-dev did not create; remove it (`docker rm -f {name}`) or stop the runtime that owns it"
        )));
    }
    docker(program, &[s("rm"), s("-f"), s(name)], SHORT)
        .await
        .map(|_| ())
}

async fn ensure_image(program: &Path, module: &str, image: &str) -> Result<(), EdgeDevError> {
    if docker(
        program,
        &[s("image"), s("inspect"), s("-f"), s("{{.Id}}"), s(image)],
        SHORT,
    )
    .await
    .is_ok()
    {
        return Ok(());
    }
    tracing::info!(module, image, "image not in the engine; pulling it");
    docker(program, &[s("pull"), s(image)], Duration::from_secs(600)).await.map(|_| ()).map_err(|e| {
        EdgeDevError::Config(format!(
            "module {module}: the image {image} is neither in the local engine nor pullable ({e}); build it with scripts/build-images.sh"
        ))
    })
}

/// Starts `containers` in startupOrder on `network`, mirrors their logs (prefixed with the module name) and
/// their state into `status`, and when `stop` becomes true stops them (`docker stop -t grace`), removes them
/// and the network if edge-dev created it. Every container it started is removed, also after an error.
pub async fn supervise(
    opts: DockerOptions,
    network: DockerNetwork,
    socket: PathBuf,
    mut containers: Vec<ContainerSpec>,
    status: StatusMap,
    mut stop: watch::Receiver<bool>,
) -> Result<(), EdgeDevError> {
    containers.sort_by_key(|c| (c.startup_order.unwrap_or(u32::MAX), c.name.clone()));
    // The containers run as an unprivileged user; the socket is created by this (often root) process.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(|e| {
            EdgeDevError::Io {
                path: socket.clone(),
                source: e,
            }
        })?;
    }
    let mut started: Vec<String> = Vec::new();
    let mut logs = Vec::new();
    let result = async {
        for c in &containers {
            if *stop.borrow() {
                break;
            }
            ensure_image(&opts.program, &c.name, &c.image).await?;
            remove_stale(&opts.program, &c.name, &network.name).await?;
            let mut args = vec![s("run")];
            args.extend(run_args(c, &network, &socket)?);
            docker(&opts.program, &args, SHORT).await?;
            started.push(c.name.clone());
            tracing::info!(module = %c.name, image = %c.image, "container started");
            set_status(&status, &c.name, |st| st.running = true);
            logs.push(follow_logs(&opts.program, &c.name));
        }
        Ok::<(), EdgeDevError>(())
    }
    .await;
    if let Err(e) = &result {
        tracing::error!("{e}");
    } else {
        loop {
            tokio::select! {
                _ = crate::supervisor::stopped(&mut stop) => break,
                _ = tokio::time::sleep(Duration::from_secs(2)) => refresh_status(&opts.program, &started, &status).await,
            }
        }
    }
    // Stop: modules first (they flush to the hub, which still runs), then remove what was created.
    if !started.is_empty() {
        let mut args = vec![s("stop"), s("-t"), opts.stop_grace.as_secs().to_string()];
        args.extend(started.iter().cloned());
        if let Err(e) = docker(&opts.program, &args, opts.stop_grace + SHORT).await {
            tracing::warn!("{e}");
        }
        let mut args = vec![s("rm"), s("-f")];
        args.extend(started.iter().cloned());
        if let Err(e) = docker(&opts.program, &args, SHORT).await {
            tracing::warn!("{e}");
        }
    }
    for l in logs {
        l.abort();
    }
    for n in &started {
        set_status(&status, n, |st| {
            st.running = false;
            st.pid = None;
            st.last_exit = Some("stopped".into());
        });
    }
    if network.created {
        if let Err(e) = docker(
            &opts.program,
            &[s("network"), s("rm"), network.name.clone()],
            SHORT,
        )
        .await
        {
            tracing::warn!("{e}");
        }
    }
    result
}

fn set_status(status: &StatusMap, name: &str, f: impl FnOnce(&mut ModuleStatus)) {
    let mut map = status.lock().unwrap_or_else(|p| p.into_inner());
    f(map.entry(name.to_string()).or_default());
}

async fn refresh_status(program: &Path, names: &[String], status: &StatusMap) {
    if names.is_empty() {
        return;
    }
    let mut args = vec![
        s("inspect"),
        s("-f"),
        s("{{.Name}} {{.State.Running}} {{.State.Pid}} {{.RestartCount}} {{.State.ExitCode}}"),
    ];
    args.extend(names.iter().cloned());
    let Ok(text) = docker(program, &args, SHORT).await else {
        return;
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 {
            continue;
        }
        let name = f[0].trim_start_matches('/');
        set_status(status, name, |st| {
            st.running = f[1] == "true";
            st.pid = f[2].parse().ok().filter(|p| *p != 0);
            st.restarts = f[3].parse().unwrap_or(st.restarts);
            if !st.running {
                st.last_exit = Some(format!("exited with code {}", f[4]));
            }
        });
    }
}

/// `docker logs -f NAME`, each line printed to our standard error with the module name in front. `logs -f`
/// ends when the container exits; after a restart (docker's restart policy) it follows again from then on.
/// Runs until aborted.
fn follow_logs(program: &Path, name: &str) -> tokio::task::JoinHandle<()> {
    let program = program.to_path_buf();
    let name = name.to_string();
    tokio::spawn(async move {
        let mut since: Option<String> = None;
        loop {
            let mut cmd = Command::new(&program);
            cmd.args(["logs", "-f"]);
            if let Some(t) = since {
                cmd.args(["--since", t.as_str()]);
            }
            cmd.arg(&name)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let Ok(mut child) = cmd.spawn() else { return };
            let out = child
                .stdout
                .take()
                .map(|o| tokio::spawn(forward(name.clone(), o)));
            let err = child
                .stderr
                .take()
                .map(|e| tokio::spawn(forward(name.clone(), e)));
            let status = child.wait().await;
            // From the moment this container run ended: what the next run prints is not lost.
            since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()));
            for t in [out, err].into_iter().flatten() {
                let _ = t.await;
            }
            // `docker logs` fails once the container is gone (removed): nothing more to follow.
            if !matches!(status, Ok(st) if st.success()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn forward(name: String, r: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{name:>18} | {line}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net() -> DockerNetwork {
        DockerNetwork {
            name: "azure-iot-edge".into(),
            gateway: "172.18.0.1".parse().unwrap(),
            created: true,
        }
    }

    fn spec(create: Value) -> ContainerSpec {
        let mut env = BTreeMap::new();
        env.insert(
            "IOTEDGE_MODULEID".to_string(),
            "MqttServerModule".to_string(),
        );
        ContainerSpec {
            name: "MqttServerModule".into(),
            image: "localhost:5000/mqtt-server:0.1.0-amd64".into(),
            env,
            create_options: create,
            restart_policy: RestartPolicy::Always,
            startup_order: Some(2),
        }
    }

    fn pairs(a: &[String], flag: &str) -> Vec<String> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn seed_create_options_become_port_flags_and_the_runtime_wiring() {
        let co = json!({"ExposedPorts": {"1889/tcp": {}}, "HostConfig": {"PortBindings": {"1889/tcp": [{"HostPort": "1889"}]}}});
        let a = run_args(&spec(co), &net(), Path::new("/d/workload.sock")).unwrap();
        assert_eq!(&a[..3], &["-d", "--name", "MqttServerModule"]);
        assert_eq!(pairs(&a, "-p"), vec!["1889:1889/tcp"]);
        assert_eq!(pairs(&a, "--expose"), vec!["1889/tcp"]);
        assert_eq!(pairs(&a, "--network"), vec!["azure-iot-edge"]);
        assert_eq!(pairs(&a, "--add-host"), vec!["edgeHub:172.18.0.1"]);
        assert_eq!(
            pairs(&a, "-v"),
            vec!["/d/workload.sock:/var/run/iotedge/workload.sock"]
        );
        assert_eq!(pairs(&a, "--restart"), vec!["always"]);
        assert_eq!(pairs(&a, "-e"), vec!["IOTEDGE_MODULEID=MqttServerModule"]);
        assert_eq!(a.last().unwrap(), "localhost:5000/mqtt-server:0.1.0-amd64");
    }

    #[test]
    fn env_cmd_entrypoint_binds_and_host_ip() {
        let co = json!({
            "Env": ["A=1"], "Cmd": ["--verbose"], "Entrypoint": ["/bin/x", "-y"],
            "HostConfig": {"Binds": ["/h:/c:ro"], "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}, {}]},
                           "Devices": [{"PathOnHost": "/dev/ttyUSB0"}], "Memory": 1048576}
        });
        let a = run_args(&spec(co), &net(), Path::new("/s")).unwrap();
        assert_eq!(pairs(&a, "-p"), vec!["127.0.0.1:8080:80/tcp", "80/tcp"]);
        assert!(pairs(&a, "-v").contains(&"/h:/c:ro".to_string()));
        assert_eq!(pairs(&a, "--device"), vec!["/dev/ttyUSB0:/dev/ttyUSB0:rwm"]);
        assert_eq!(pairs(&a, "--memory"), vec!["1048576b"]);
        // createOptions' Env first, then the module's (so IOTEDGE_* win, as with edgeAgent).
        assert_eq!(
            pairs(&a, "-e"),
            vec!["A=1", "IOTEDGE_MODULEID=MqttServerModule"]
        );
        assert_eq!(pairs(&a, "--entrypoint"), vec!["/bin/x"]);
        let img = a
            .iter()
            .position(|x| x == "localhost:5000/mqtt-server:0.1.0-amd64")
            .unwrap();
        assert_eq!(&a[img + 1..], &["-y", "--verbose"]);
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let e = run_args(&spec(json!({"Healthcheck": {}})), &net(), Path::new("/s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Healthcheck") && e.contains("--external"), "{e}");
        let e = run_args(
            &spec(json!({"HostConfig": {"Sysctls": {}}})),
            &net(),
            Path::new("/s"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("HostConfig.Sysctls"), "{e}");
        let e = run_args(
            &spec(json!({"HostConfig": {"PortBindings": {"1/tcp": "x"}}})),
            &net(),
            Path::new("/s"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("PortBindings"), "{e}");
    }

    #[test]
    fn restart_policies_and_hub_address() {
        assert_eq!(restart_flag(RestartPolicy::Never), "no");
        assert_eq!(restart_flag(RestartPolicy::OnFailure), "on-failure");
        assert_eq!(restart_flag(RestartPolicy::Always), "always");
        let n = net();
        assert_eq!(
            hub_listen("127.0.0.1:8883".parse().unwrap(), &n),
            "172.18.0.1:8883".parse().unwrap()
        );
        assert_eq!(
            hub_listen("0.0.0.0:8883".parse().unwrap(), &n),
            "0.0.0.0:8883".parse().unwrap()
        );
    }
}
