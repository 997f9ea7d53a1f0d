"""Shared fixtures of the end-to-end tests: a harness that runs `edge-dev up` on a deployment written by the
test, in a temporary folder, and stops it (SIGTERM, or kill -9 on purpose) when the test ends.

Everything listens on 127.0.0.1 only; every wait is bounded."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN_DIR = pathlib.Path(os.environ.get("EDGE_DEV_BIN_DIR", REPO / "target" / "debug"))
EDGE_DEV = BIN_DIR / "edge-dev"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_for(predicate, timeout, what, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


def template():
    """The repository's deployment.template.json, parsed."""
    return json.loads((REPO / "deployment.template.json").read_text())


def read_jsonl(path):
    path = pathlib.Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


class EdgeDev:
    """One `edge-dev up` process on a manifest the test wrote."""

    def __init__(self, workdir: pathlib.Path, manifest: dict, hub_port=None, external=(), extra_args=()):
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.manifest_path = workdir / "deployment.template.json"
        self.manifest_path.write_text(json.dumps(manifest, indent=2))
        self.upstream_log = workdir / "upstream.jsonl"
        self.hub_port = hub_port or free_port()
        self.external = list(external)
        self.extra_args = list(extra_args)
        self.proc = None
        self.runs = 0

    def args(self, extra=()):
        a = [
            str(EDGE_DEV), "--data-dir", str(self.data_dir), "up",
            "--manifest", str(self.manifest_path),
            "--modules-dir", str(REPO / "modules"),
            "--bin-dir", str(BIN_DIR),
            "--upstream-log", str(self.upstream_log),
            "--hub-listen", f"127.0.0.1:{self.hub_port}",
            "--dashboard", "127.0.0.1:0",  # any free port: tests run edge-dev side by side
            "--api", "127.0.0.1:0",  # the control API too; the CLI finds it through the data folder
        ]
        for e in self.external:
            a += ["--external", e]
        return a + self.extra_args + list(extra)

    def start(self, extra=()):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        self.log_path = self.workdir / f"edge-dev.{self.runs}.log"
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(self.args(extra), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        wait_port(self.hub_port, proc=self.proc)
        return self

    def output(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def upstream(self):
        return read_jsonl(self.upstream_log)

    def stop(self, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("edge-dev did not stop within %s s of SIGTERM:\n%s" % (timeout, self.output()[-4000:]))
        finally:
            self.log.close()
        return self.proc.returncode

    def kill9(self):
        """kill -9 of edge-dev itself, as a power cut or the OOM killer would. Its module processes must die
        with it (edge-dev arranges that; the test does not kill them). Returns their pids, so a test can
        check; the fixture's teardown kills any that a failing runtime left, so one test cannot break the next."""
        self.children = [int(c) for c in subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                                         text=True).stdout.split()]
        self.leftovers = getattr(self, "leftovers", []) + self.children
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()
        return self.children

    def cli(self, *args, timeout=60, check=True):
        """An `edge-dev` command against this runtime (send, twin, invoke, upstream, ...): its stdout."""
        r = subprocess.run([str(EDGE_DEV), "--data-dir", str(self.data_dir), *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"edge-dev {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r.stdout

    def api_url(self):
        path = self.data_dir / "api.url"
        return wait_for(lambda: path.exists() and path.read_text().strip(), 30, "the control API's address")

    def module_cred(self, name):
        out = subprocess.run([str(EDGE_DEV), "--data-dir", str(self.data_dir), "module-cred", name],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return values["EdgeHubConnectionString"], values["EdgeModuleCACertificateFile"]


@pytest.fixture
def edge_dev_factory(tmp_path):
    started = []

    def make(manifest, **kw):
        e = EdgeDev(tmp_path, manifest, **kw)
        started.append(e)
        return e

    yield make
    for e in started:
        try:
            e.stop()
        except Exception:  # the test's own assertion is the interesting one
            if e.proc and e.proc.poll() is None:
                e.proc.kill()
        for pid in getattr(e, "leftovers", []):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(autouse=True)
def _binaries_built():
    if not EDGE_DEV.exists():
        pytest.fail(f"{EDGE_DEV} is missing: build with `cargo build --workspace --bins` (scripts/test.sh does)")
