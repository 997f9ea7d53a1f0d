"""arm32v7 (Raspberry Pi, 32-bit) on this amd64 machine, without rustup or an image registry (issue 6).

- scripts/build-arm32v7.sh cross-compiles the three modules with Debian's rustc-web 1.85 and its armhf
  standard library, and runs their unit tests under qemu-arm-static.
- Smoke run: the seed pipeline with the armv7 binaries, each under qemu, run by the native `edge-dev up`
  (TLS to the hub, workload API, twins, routes): readings published with mosquitto_pub come out upstream
  as the window averages computed here.
- The arm32v7 images (linux/arm/v7, FROM scratch) are built from those binaries, are well under 20 MB, and
  each image's own file system (interpreter and libraries) runs its binary under qemu.
- With binfmt (scripts/enable-binfmt.sh: Debian's qemu-user-static and binfmt-support, fix-binary flag), the
  Docker engine runs those images: `edge-dev up --docker --platform arm32v7` runs the three modules as
  arm32v7 containers, the windows of the test's readings come out upstream, and the simulator's readings
  reach them too. Where the kernel refuses binfmt the
  test is reported as skipped with the reason.

The armv7 build is done once per session into target/arm32v7 (kept across runs: later runs only check it).
The image test is skipped, with the reason printed, only where no Docker engine exists."""

import datetime as dt
import json
import math
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import BIN_DIR, REPO, EdgeDev, free_port, template, wait_for, wait_port

MODULES = ["mqtt-server", "aggregator", "esp-sim"]
TARGET_DIR = REPO / "target" / "arm32v7"
ARM_BIN = TARGET_DIR / "armv7-unknown-linux-gnueabihf" / "release"
SYSROOT = "/usr/arm-linux-gnueabihf"


def run(args, timeout, env=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=e)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="session")
def arm_build():
    """Installs the cross toolchain, cross-builds the modules and runs their unit tests under qemu."""
    run(["scripts/install-image-deps.sh", "--arm32v7"], timeout=1200)
    out = run(["scripts/build-arm32v7.sh", "--test"], timeout=2400, env={"CARGO_TARGET_DIR": str(TARGET_DIR)})
    return out


def test_unit_tests_pass_under_qemu(arm_build):
    results = [line for line in arm_build.splitlines() if line.startswith("test result:")]
    # The lib and bin test targets of the three modules ran (each prints one result line).
    assert len(results) >= 6, arm_build[-4000:]
    assert all(line.startswith("test result: ok.") for line in results), results
    ran = sum(int(line.split("ok.")[1].split("passed")[0]) for line in results)
    assert ran >= 30, results
    assert "armv7-unknown-linux-gnueabihf" in arm_build
    for m in MODULES:
        b = ARM_BIN / m
        header = subprocess.run(["readelf", "-h", str(b)], capture_output=True, text=True, check=True).stdout
        assert "ARM" in header and "ELF32" in header, header
        # Each runs under qemu (the -E: without it the cross loader picks up libc6:armhf via ld.so.cache
        # and threaded programs crash).
        r = subprocess.run(["qemu-arm-static", "-L", SYSROOT, "-E", f"LD_LIBRARY_PATH={SYSROOT}/lib", str(b), "--version"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and m in r.stdout, (m, r.stdout, r.stderr)


class QemuEdgeDev(EdgeDev):
    """`edge-dev up` (native) whose module binaries are the armv7 ones, each started through qemu."""

    def __init__(self, workdir, manifest, bin_dir):
        super().__init__(workdir, manifest)
        self.qemu_bin_dir = bin_dir

    def args(self, extra=()):
        a = super().args(extra)
        a[a.index("--bin-dir") + 1] = str(self.qemu_bin_dir)
        return a


def window_end(t, size=2):
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return epoch + dt.timedelta(seconds=math.ceil((t - epoch).total_seconds() / size) * size)


def test_smoke_pipeline_with_armv7_modules_under_qemu(arm_build, tmp_path):
    wrappers = tmp_path / "armv7-bin"
    wrappers.mkdir()
    for m in MODULES:
        w = wrappers / m
        # exec: qemu becomes the process edge-dev supervises, and passes SIGTERM to the module.
        w.write_text(f"#!/bin/sh\nexec qemu-arm-static -L {SYSROOT} -E LD_LIBRARY_PATH={SYSROOT}/lib {ARM_BIN / m} \"$@\"\n")
        w.chmod(0o755)
    mqtt_port = free_port()
    m = template()
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    agent["modules"]["ESPSimModule"]["status"] = "stopped"  # every reading is one the test knows
    agent["modules"]["MqttServerModule"].setdefault("env", {})["MQTT_PORT"] = {"value": str(mqtt_port)}
    m["modulesContent"]["AggregatorModule"]["properties.desired"]["query"] = (
        'SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,2)')
    edge = QemuEdgeDev(tmp_path, m, wrappers)
    try:
        edge.start()
        wait_port(mqtt_port, timeout=120, proc=edge.proc)
        now = dt.datetime.now(dt.timezone.utc)
        base = window_end(now + dt.timedelta(seconds=4))
        readings = [(0.2, 36.5), (1.1, 38.0), (2.0, 39.5), (2.6, 37.0), (3.3, 36.0), (4.8, 40.0)]
        expected = {}
        for off, temp in readings:
            t = base + dt.timedelta(seconds=off)
            expected.setdefault(window_end(t), []).append(temp)
            payload = json.dumps({"temp": temp, "timeCreated": t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"})
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-q", "1", "-i", "armv7-sensor",
                            "-t", "MyTopic", "-m", payload], check=True, timeout=60)
        rows = wait_for(lambda: (lambda r: r if len(r) >= len(expected) else None)(
            [x for x in edge.upstream() if x["output"] == "AvgTemp"]),
            180, lambda: f"{len(expected)} AvgTemp windows from the armv7 modules:\n" + edge.output()[-4000:])
        got = sorted(round(r["body"]["avg"], 9) for r in rows)
        assert got == sorted(round(sum(v) / len(v), 9) for v in expected.values()), rows
        assert edge.stop(timeout=60) == 0, edge.output()[-3000:]
    finally:
        if edge.proc is not None and edge.proc.poll() is None:
            edge.kill9()  # edge-dev; its module processes die with it


def test_arm32v7_images_built_here_are_small_and_self_contained(arm_build, tmp_path):
    from test_docker import docker, docker_available, image
    why = docker_available()
    if why:
        print(f"SKIP: {why}", file=sys.stderr)
        pytest.skip(why)
    out = run(["scripts/build-images.sh", "--prebuilt", "--platform", "arm32v7"], timeout=1800,
              env={"CONTAINER_REGISTRY_ADDRESS": "localhost:5000", "CARGO_TARGET_DIR": str(TARGET_DIR)})
    print(out)
    for m in MODULES:
        ref = image(m, "arm32v7")
        info = json.loads(docker("image", "inspect", ref).stdout)[0]
        size_mb = info["Size"] / 1e6
        print(f"{ref}: {size_mb:.1f} MB")
        assert size_mb < 20, f"{ref} is {size_mb:.1f} MB"
        assert (info["Os"], info["Architecture"], info.get("Variant")) == ("linux", "arm", "v7"), info
        assert info["Config"]["User"] == "10001:10001" and info["Config"]["Entrypoint"] == ["/usr/local/bin/module"]
        # This engine cannot run arm containers (no binfmt here), so run the image's own file system with
        # qemu: its interpreter and libraries, not the host's cross sysroot.
        root = tmp_path / m
        root.mkdir()
        cid = docker("create", ref).stdout.strip()
        try:
            tar_path = tmp_path / f"{m}.tar"
            with open(tar_path, "wb") as f:
                subprocess.run(["docker", "export", cid], stdout=f, check=True, timeout=120)
        finally:
            docker("rm", "-f", cid, check=False)
        with tarfile.open(tar_path) as t:
            t.extractall(root)
        assert (root / "lib" / "ld-linux-armhf.so.3").exists()
        r = subprocess.run(["qemu-arm-static", "-L", str(root), "-E", f"LD_LIBRARY_PATH={root}/lib/arm-linux-gnueabihf",
                            str(root / "usr/local/bin/module"), "--version"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and m in r.stdout, (m, r.stdout, r.stderr)


def mqtt_answers(port):
    """True when an MQTT 3.1.1 CONNECT on `port` gets a CONNACK that accepts it."""
    import socket
    connect = bytes([0x10, 0x12, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x06]) + b"probe1"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(connect)
            s.settimeout(3)
            ack = s.recv(4)
            s.sendall(bytes([0xE0, 0x00]))
            return ack[:2] == bytes([0x20, 0x02]) and len(ack) == 4 and ack[3] == 0
    except OSError:
        return False


def test_up_docker_runs_the_seed_pipeline_from_the_arm32v7_images(arm_build, tmp_path):
    """The arm32v7 images on a Docker engine (under qemu through binfmt), run by `edge-dev up --docker`."""
    docker_pipeline("arm32v7", "linux/arm/v7", tmp_path, env={"CARGO_TARGET_DIR": str(TARGET_DIR)})


def docker_pipeline(platform, docker_platform, tmp_path, env=None):
    """Builds `platform`'s images (prebuilt), enables binfmt (or skips, with the kernel's reason), and runs
    the seed pipeline from them with `edge-dev up --docker --platform PLATFORM`: the windows of readings
    published with mosquitto_pub must come out upstream. Prints the start-up time under emulation."""
    import time

    from test_docker import DockerEdgeDev, cleanup_docker, docker, docker_available, image
    why = docker_available()
    if why:
        print(f"SKIP: {why}", file=sys.stderr)
        pytest.skip(why)
    r = subprocess.run(["scripts/enable-binfmt.sh"], cwd=REPO, capture_output=True, text=True, timeout=900)
    if r.returncode == 3:
        print(f"SKIP: {r.stderr.strip()}", file=sys.stderr)
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    # the images (built here from cross-compiled binaries; building again only re-tags)
    out = run(["scripts/build-images.sh", "--prebuilt", "--platform", platform], timeout=2400,
              env={"CONTAINER_REGISTRY_ADDRESS": "localhost:5000", **(env or {})})
    print(out)
    for m in MODULES:
        info = json.loads(docker("image", "inspect", image(m, platform)).stdout)[0]
        assert info["Size"] / 1e6 < 20, f"{m} is {info['Size'] / 1e6:.1f} MB"
        assert info["Config"]["User"] == "10001:10001"
    arch = docker("run", "--rm", "--platform", docker_platform, "--entrypoint", "/usr/local/bin/module",
                  image("mqtt-server", platform), "--version")
    assert arch.returncode == 0 and "mqtt-server" in arch.stdout, arch.stdout + arch.stderr

    names = ["MqttServerModule", "AggregatorModule", "ESPSimModule"]
    for n in names:
        if docker("container", "inspect", n, check=False).returncode == 0:
            pytest.fail(f"a container named {n} already exists; this test needs the module names (docker rm -f {n})")
    network = f"edge-dev-{platform}-{os.getpid()}"
    mqtt_port = free_port()
    m = template()
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    agent["modules"]["MqttServerModule"]["settings"]["createOptions"]["HostConfig"]["PortBindings"] = {
        "1889/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(mqtt_port)}]}
    # all three modules run; per-device windows keep the test's readings apart from the simulator's
    m["modulesContent"]["AggregatorModule"]["properties.desired"]["query"] = (
        'SELECT deviceId, Avg(temp) AS avg INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated '
        'GROUP BY deviceId, TumblingWindow(second,2)\n'
        'SELECT deviceId, COUNT(*) AS n INTO Seen FROM temperature GROUP BY deviceId, TumblingWindow(second,2)')
    edge = DockerEdgeDev(tmp_path, m, network, platform=platform)
    try:
        started = time.monotonic()
        edge.start()
        running = names
        wait_for(lambda: all(docker("inspect", "-f", "{{.State.Running}}", n, check=False).stdout.strip() == "true"
                             for n in running), 180, lambda: "the containers running:\n" + edge.output()[-3000:])
        for n in running:
            info = json.loads(docker("inspect", n).stdout)[0]
            assert info["Config"]["Image"].endswith("-" + platform), info["Config"]["Image"]
        # docker's port proxy accepts at once; the server under qemu answers a CONNECT once it is up
        wait_for(lambda: mqtt_answers(mqtt_port), 180,
                 lambda: "MqttServerModule answering CONNECT:\n" + edge.output()[-3000:], interval=0.5)
        up_after = time.monotonic() - started
        now = dt.datetime.now(dt.timezone.utc)
        base = now.replace(microsecond=0) + dt.timedelta(seconds=6 - now.second % 2)
        expected = {}
        for off, temp in [(0.2, 36.6), (1.1, 37.4), (2.5, 38.8), (3.9, 39.2)]:
            t = base + dt.timedelta(seconds=off)
            end = base + dt.timedelta(seconds=2 * math.ceil(off / 2))
            expected.setdefault(end, []).append(temp)
            payload = json.dumps({"temp": temp, "timeCreated": t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"})
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-q", "1", "-i", "arm-sensor",
                            "-t", "MyTopic", "-m", payload], check=True, timeout=60)
        rows = wait_for(lambda: (lambda r: r if len(r) >= len(expected) else None)(
            [x for x in edge.upstream() if x["output"] == "AvgTemp" and x["body"].get("deviceId") == "arm-sensor"]),
            180, lambda: f"the windows from the {platform} containers:\n" + edge.output()[-4000:])
        got = sorted(round(r["body"]["avg"], 9) for r in rows)
        assert got == sorted(round(sum(v) / len(v), 9) for v in expected.values()), rows
        # ESPSimModule's container (MQTT_HOST=MqttServerModule) reached the MQTT server too
        wait_for(lambda: [x for x in edge.upstream() if x["output"] == "Seen" and x["body"].get("deviceId") != "arm-sensor"],
                 180, lambda: f"a reading of the {platform} simulator:\n" + edge.output()[-4000:])
        print(f"\n{platform} containers under qemu: MQTT answering {up_after:.1f} s after edge-dev up --docker started")
        assert edge.stop(timeout=120) == 0, edge.output()[-3000:]
    finally:
        if edge.proc is not None and edge.proc.poll() is None:
            edge.proc.kill()
            edge.proc.wait(timeout=30)
        cleanup_docker(network, names)
