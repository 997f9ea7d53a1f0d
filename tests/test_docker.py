"""Container images on a real Docker engine (issue 6).

- The three amd64 module images are built here from what the machine has (no base image can be pulled):
  release binaries on `scratch` through the Dockerfile's `prebuilt` stage (scripts/build-images.sh
  --prebuilt). Each must be well under 20 MB, run as a non-root user, and stop on SIGTERM.
- `edge-dev up --docker` runs the deployment from those images on a user-defined network; the test
  publishes to the MQTT server's host port (createOptions PortBindings) with mosquitto_pub and finds the
  window averages upstream; ESPSimModule reaches MqttServerModule by its container name.
- The images are pushed to a real registry (Debian's docker-registry on a free localhost port, started
  and stopped here), removed locally, pulled back and run.
- iotedgedev 3.3.9 (PyPI, in its own venv) and `edge-dev genconfig` expand our template and module.json
  files into the same deployment for every platform.

Skipped, with the reason printed, only where no Docker engine is reachable. Everything a test starts
(containers, networks, the registry, images it tagged) is removed at its end, also on failure."""

import datetime as dt
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import BIN_DIR, REPO, EdgeDev, free_port, read_jsonl, template, wait_for, wait_port

MODULES = ["mqtt-server", "aggregator", "esp-sim"]
REGISTRY = "localhost:5000"  # the tag prefix the images are built with (iotedgedev's default registry)
VERSION = {m: json.loads((REPO / "modules" / m / "module.json").read_text())["image"]["tag"]["version"] for m in MODULES}


def image(module, platform="amd64", registry=REGISTRY):
    return f"{registry}/{module}:{VERSION[module]}-{platform}"


def docker(*args, check=True, timeout=120):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def docker_available():
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if r.returncode != 0:
        return "no Docker engine reachable: " + r.stderr.strip()[:200]
    return None


def require_docker():
    why = docker_available()
    if why:
        print(f"SKIP: {why}", file=sys.stderr)
        pytest.skip(why)


def run_script(args, timeout, env=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=e)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout


@pytest.fixture(scope="session")
def amd64_images():
    """Builds the three amd64 images once per session (release build in target/images)."""
    require_docker()
    run_script(["scripts/install-image-deps.sh"], timeout=900)
    out = run_script(["scripts/build-images.sh", "--prebuilt", "--platform", "amd64"], timeout=1800,
                     env={"CONTAINER_REGISTRY_ADDRESS": REGISTRY})
    print(out)
    return {m: image(m) for m in MODULES}


def test_images_are_small_non_root_and_stop_on_sigterm(amd64_images):
    for module, ref in amd64_images.items():
        info = json.loads(docker("image", "inspect", ref).stdout)[0]
        size_mb = info["Size"] / 1e6
        print(f"{ref}: {size_mb:.1f} MB")
        assert size_mb < 20, f"{ref} is {size_mb:.1f} MB"
        assert info["Config"]["User"] == "10001:10001", info["Config"]
        assert info["Architecture"] == "amd64"
        assert info["Config"]["Entrypoint"] == ["/usr/local/bin/module"]
        # The binary runs from the scratch image (its interpreter and libraries are all there).
        r = docker("run", "--rm", ref, "--version", check=False)
        assert r.returncode == 0 and module in r.stdout, (module, r.stdout, r.stderr)
        r = docker("run", "--rm", "--entrypoint", "/usr/local/bin/module", ref, "--help", check=False)
        assert r.returncode == 0, r.stderr

    # docker stop sends SIGTERM: the simulator (standalone, its MQTT server absent, so it keeps retrying)
    # exits by itself, not with 137 from the SIGKILL that follows a 20 s grace.
    name = f"edge-dev-sigterm-{os.getpid()}"
    try:
        docker("run", "-d", "--name", name, "-e", "MQTT_HOST=127.0.0.1", "-e", "MQTT_PORT=9", amd64_images["esp-sim"])
        time.sleep(2)
        assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true", docker("logs", name).stderr
        started = time.time()
        docker("stop", "-t", "20", name)
        code = int(docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip())
        assert code != 137, "the module did not stop on SIGTERM; docker had to kill it:\n" + docker("logs", name).stderr[-2000:]
        assert time.time() - started < 20
    finally:
        docker("rm", "-f", name, check=False)


class DockerEdgeDev(EdgeDev):
    """`edge-dev up --docker` on its own network; ready once it printed where its hub listens."""

    def __init__(self, workdir, manifest, network, platform="amd64"):
        super().__init__(workdir, manifest)
        self.network = network
        self.extra_args = ["--docker", "--docker-network", network, "--platform", platform]

    def start(self, extra=(), wait=True):
        self.runs += 1
        self.log_path = self.workdir / f"edge-dev.{self.runs}.log"
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env["CONTAINER_REGISTRY_ADDRESS"] = REGISTRY
        self.proc = subprocess.Popen(self.args(extra), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        if not wait:
            return self
        wait_for(lambda: self.proc.poll() is not None or "edge-dev: hub on" in self.output(), 120,
                 lambda: "edge-dev to start:\n" + self.output()[-3000:])
        assert self.proc.poll() is None, self.output()[-3000:]
        return self


def cleanup_docker(network, names):
    for n in names:
        r = docker("inspect", "-f", '{{index .Config.Labels "edge-dev.network"}}', n, check=False)
        if r.returncode == 0 and r.stdout.strip() == network:
            docker("rm", "-f", n, check=False)
    docker("network", "rm", network, check=False)


def test_up_docker_runs_the_pipeline_from_the_images(amd64_images, tmp_path):
    names = ["MqttServerModule", "AggregatorModule", "ESPSimModule"]
    for n in names:
        if docker("container", "inspect", n, check=False).returncode == 0:
            pytest.fail(f"a container named {n} already exists; this test needs the module names (docker rm -f {n})")
    network = f"edge-dev-test-{os.getpid()}"
    mqtt_port = free_port()
    m = template()
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    # createOptions are applied: the MQTT server's 1889 is published on a free host port.
    agent["modules"]["MqttServerModule"]["settings"]["createOptions"]["HostConfig"]["PortBindings"] = {
        "1889/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(mqtt_port)}]}
    device = "docker-test-sensor"
    m["modulesContent"]["AggregatorModule"]["properties.desired"]["query"] = (
        'SELECT deviceId, Avg(temp) AS avg INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated '
        'GROUP BY deviceId, TumblingWindow(second,2)\n'
        # Arrival-time windows: every device that reached the MQTT server, ESPSimModule included.
        'SELECT deviceId, COUNT(*) AS n INTO Seen FROM temperature GROUP BY deviceId, TumblingWindow(second,2)')
    edge = DockerEdgeDev(tmp_path, m, network)
    try:
        edge.start()
        wait_for(lambda: all(docker("inspect", "-f", "{{.State.Running}}", n, check=False).stdout.strip() == "true" for n in names),
                 90, lambda: "the three containers running:\n" + edge.output()[-3000:])
        # The containers: on the network, non-root, named after the modules, with the workload socket.
        for n in names:
            info = json.loads(docker("inspect", n).stdout)[0]
            assert network in info["NetworkSettings"]["Networks"], info["NetworkSettings"]["Networks"]
            assert info["Config"]["User"] == "10001:10001"
            envs = dict(e.split("=", 1) for e in info["Config"]["Env"])
            assert envs["IOTEDGE_MODULEID"] == n and envs["IOTEDGE_GATEWAYHOSTNAME"] == "edgeHub"
            assert envs["IOTEDGE_WORKLOADURI"] == "unix:///var/run/iotedge/workload.sock"
        wait_port(mqtt_port, timeout=60)

        now = dt.datetime.now(dt.timezone.utc)
        base = now.replace(microsecond=0) + dt.timedelta(seconds=4 - now.second % 2)
        offsets = [0.1, 0.5, 1.9, 2.0, 2.3, 3.5, 4.2, 5.9]
        temps = [36.6, 37.2, 38.4, 39.0, 36.0, 37.5, 40.1, 35.8]
        expected = {}
        published_by = time.time()
        for off, temp in zip(offsets, temps):
            t = base + dt.timedelta(seconds=off)
            end = base + dt.timedelta(seconds=2 * math.ceil(off / 2))  # windows are (start, end]
            expected.setdefault(end, []).append(temp)
            payload = json.dumps({"temp": temp, "timeCreated": t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"})
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-q", "1", "-i", device,
                            "-t", "MyTopic", "-m", payload], check=True, timeout=30)
        assert time.time() - published_by < 60

        def ours():
            rows = [r for r in edge.upstream() if r["output"] == "AvgTemp" and r["body"].get("deviceId") == device]
            return rows if len(rows) >= len(expected) else None

        rows = wait_for(ours, 120, lambda: f"{len(expected)} AvgTemp windows of {device} upstream:\n" + edge.output()[-4000:])
        got = sorted(round(r["body"]["avg"], 9) for r in rows)
        want = sorted(round(sum(v) / len(v), 9) for v in expected.values())
        assert got == want, (rows, expected)
        assert all(r["module"] == "AggregatorModule" for r in rows)

        # ESPSimModule (MQTT_HOST=MqttServerModule) reached the MQTT server by its container name.
        others = wait_for(lambda: [r for r in edge.upstream() if r["output"] == "Seen" and r["body"].get("deviceId") != device],
                          90, lambda: "a Seen row from ESPSimModule's devices:\n" + edge.output()[-4000:])
        assert others[0]["body"]["n"] >= 1
        assert edge.stop(timeout=90) == 0, edge.output()[-3000:]
        for n in names:
            assert docker("container", "inspect", n, check=False).returncode != 0, f"{n} was not removed at stop"
        assert docker("network", "inspect", network, check=False).returncode != 0, "the network was not removed at stop"
    finally:
        if edge.proc is not None and edge.proc.poll() is None:
            edge.proc.kill()
            edge.proc.wait(timeout=30)
        cleanup_docker(network, names)


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry (distribution 2.8) on a free localhost port, with its storage in tmp_path."""
    exe = shutil.which("docker-registry")
    assert exe, "docker-registry is missing; scripts/install-image-deps.sh installs it"
    port = free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
                   f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield f"localhost:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_push_to_and_pull_from_a_local_registry(amd64_images, registry):
    tags = {m: image(m, registry=registry) for m in MODULES}
    try:
        for m in MODULES:
            docker("tag", amd64_images[m], tags[m])
        # push-images.sh: the versioned tags from module.json, for this registry.
        out = run_script(["scripts/push-images.sh", "--platform", "amd64"], timeout=600,
                         env={"CONTAINER_REGISTRY_ADDRESS": registry})
        for m in MODULES:
            assert f"push-images: pushed {registry}/{m}@sha256:" in out, out
        catalog = subprocess.run(["curl", "-sf", f"http://{registry}/v2/_catalog"], capture_output=True, text=True, timeout=30)
        if catalog.returncode == 0:
            assert set(json.loads(catalog.stdout)["repositories"]) >= set(MODULES), catalog.stdout
        # Remove the local copies, pull them back from the registry and run them.
        for m in MODULES:
            docker("rmi", tags[m])
            assert docker("image", "inspect", tags[m], check=False).returncode != 0
        for m in MODULES:
            docker("pull", tags[m], timeout=300)
            r = docker("run", "--rm", tags[m], "--version", check=False)
            assert r.returncode == 0 and m in r.stdout, r
            assert docker("image", "inspect", "-f", "{{.Id}}", tags[m]).stdout == docker("image", "inspect", "-f", "{{.Id}}", amd64_images[m]).stdout
    finally:
        for t in tags.values():
            docker("rmi", t, check=False)


def test_push_script_fails_early_and_clearly():
    env = {k: v for k, v in os.environ.items() if k != "CONTAINER_REGISTRY_ADDRESS"}
    r = subprocess.run(["scripts/push-images.sh"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0 and "CONTAINER_REGISTRY_ADDRESS" in r.stderr, r.stderr
    env["CONTAINER_REGISTRY_ADDRESS"] = "example.azurecr.io"
    env["DOCKER_CONFIG"] = "/nonexistent"
    r = subprocess.run(["scripts/push-images.sh"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    if docker_available() is None:
        assert r.returncode != 0 and "docker login example.azurecr.io" in r.stderr, r.stderr


def test_deploy_script_builds_the_az_commands(tmp_path):
    manifest = tmp_path / "deployment.arm32v7.json"
    manifest.write_text("{}")
    out = subprocess.run(["scripts/deploy.sh", "--hub", "myhub", "--device", "pi-1", "--manifest", str(manifest), "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split()[:4] == ["az", "iot", "edge", "set-modules"] and "--device-id pi-1" in out and str(manifest) in out
    out = subprocess.run(["scripts/deploy.sh", "--hub", "myhub", "--deployment-id", "health-v1", "--target-condition",
                          "tags.site='home'", "--priority", "5", "--layered", "--manifest", str(manifest), "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "deployment create" in out and "--layered" in out and "--priority 5" in out and "tags.site" in out
    r = subprocess.run(["scripts/deploy.sh", "--hub", "myhub", "--deployment-id", "x", "--manifest", str(manifest)],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--target-condition" in r.stderr
    r = subprocess.run(["scripts/deploy.sh", "--hub", "myhub", "--device", "d", "--manifest", str(REPO / "deployment.template.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "template" in r.stderr
    if shutil.which("az") is None:
        r = subprocess.run(["scripts/deploy.sh", "--hub", "myhub", "--device", "d", "--manifest", str(manifest)],
                           cwd=REPO, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "Azure CLI (az) is missing" in r.stderr
    for s in ["build-images.sh", "push-images.sh", "genconfig.sh", "deploy.sh", "build-arm32v7.sh", "install-image-deps.sh"]:
        r = subprocess.run([f"scripts/{s}", "--help"], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "Usage" in r.stdout, (s, r.stdout, r.stderr)


IOTEDGEDEV_VENV = REPO / "target" / "iotedgedev-venv"


@pytest.fixture(scope="session")
def iotedgedev():
    """iotedgedev 3.3.9 from PyPI in its own venv under target/ (kept across runs)."""
    exe = IOTEDGEDEV_VENV / "bin" / "iotedgedev"
    if not exe.exists():
        run_script(["scripts/install-image-deps.sh"], timeout=900)
        subprocess.run([sys.executable, "-m", "venv", str(IOTEDGEDEV_VENV)], check=True, timeout=300)
        subprocess.run([str(IOTEDGEDEV_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        "iotedgedev==3.3.9"], check=True, timeout=900)
    return exe


@pytest.mark.parametrize("platform", ["amd64", "arm32v7", "arm64v8"])
def test_iotedgedev_genconfig_matches_ours(iotedgedev, tmp_path, platform):
    home = tmp_path / "home"
    (home / ".iotedgedev").mkdir(parents=True)
    # Offline and without telemetry: iotedgedev asks on its first run and phones home unless told not to.
    (home / ".iotedgedev" / "setting.ini").write_text("[DEFAULT]\nfirsttime = no\ncollect_telemetry = no\n")
    sol = tmp_path / "sol"
    (sol / "modules").mkdir(parents=True)
    shutil.copy(REPO / "deployment.template.json", sol)
    for m in MODULES:
        (sol / "modules" / m).mkdir()
        shutil.copy(REPO / "modules" / m / "module.json", sol / "modules" / m)
    (sol / ".env").write_text("CONTAINER_REGISTRY_ADDRESS=myregistry.azurecr.io\nCONTAINER_REGISTRY_USERNAME=user\n"
                              "CONTAINER_REGISTRY_PASSWORD=secret\n")
    # A clean environment: iotedgedev expands every $NAME of the template from it.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    r = subprocess.run([str(iotedgedev), "solution", "genconfig", "-f", "deployment.template.json", "-P", platform,
                        "--fail-on-validation-error"], cwd=sol, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    theirs = sol / "config" / f"deployment.{platform}.json"
    r2 = subprocess.run([str(REPO / "scripts" / "genconfig.sh"), "--platform", platform,
                         "--template", str(sol / "deployment.template.json"), "--out-dir", str(sol / "ours")],
                        cwd=sol, env={**env, "EDGE_DEV": str(BIN_DIR / "edge-dev")}, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    ours = sol / "ours" / f"deployment.{platform}.json"
    t, o = json.loads(theirs.read_text()), json.loads(ours.read_text())
    assert o == t
    assert ours.read_bytes() == theirs.read_bytes()
    mods = o["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    assert mods["MqttServerModule"]["settings"]["image"] == f"myregistry.azurecr.io/mqtt-server:{VERSION['mqtt-server']}-{platform}"
    assert all(not v["settings"]["image"].endswith(":latest") for v in mods.values())
    # The tags build-images.sh makes are the ones the deployment names.
    tags = run_script(["scripts/build-images.sh", "--print-tags", "--platform", platform],
                      timeout=60, env={"CONTAINER_REGISTRY_ADDRESS": "myregistry.azurecr.io"}).split()
    assert sorted(tags) == sorted(v["settings"]["image"] for v in mods.values())


def test_up_docker_refuses_a_foreign_container_and_cleans_up(amd64_images, tmp_path):
    """A container named like a module that edge-dev did not create is left alone: edge-dev stops with an
    error that says what to do, and removes the containers and network it had created."""
    names = ["MqttServerModule", "AggregatorModule", "ESPSimModule"]
    for n in names:
        if docker("container", "inspect", n, check=False).returncode == 0:
            pytest.fail(f"a container named {n} already exists; this test needs the module names (docker rm -f {n})")
    network = f"edge-dev-test-{os.getpid()}-foreign"
    # Not started, not labelled: somebody else's container with MqttServerModule's name.
    docker("create", "--name", "MqttServerModule", amd64_images["mqtt-server"])
    m = template()
    m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["MqttServerModule"]["settings"]["createOptions"] = {}
    edge = DockerEdgeDev(tmp_path, m, network)
    try:
        edge.start(wait=False)
        edge.proc.wait(timeout=120)
        out = edge.output()
        assert edge.proc.returncode != 0, out[-3000:]
        assert "a container named MqttServerModule exists that this edge-dev did not create" in out, out[-3000:]
        assert "docker rm -f MqttServerModule" in out
        # AggregatorModule (startupOrder 1) had been started: it is gone again, and so is the network.
        assert docker("container", "inspect", "AggregatorModule", check=False).returncode != 0
        assert docker("network", "inspect", network, check=False).returncode != 0
        # The foreign container is untouched.
        assert docker("inspect", "-f", "{{.State.Status}}", "MqttServerModule").stdout.strip() == "created"
    finally:
        if edge.proc is not None and edge.proc.poll() is None:
            edge.proc.kill()
            edge.proc.wait(timeout=30)
        docker("rm", "-f", "MqttServerModule", check=False)
        cleanup_docker(network, names)
