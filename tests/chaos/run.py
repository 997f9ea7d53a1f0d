#!/usr/bin/env python3
"""Chaos harness: the pipeline under a logged device fleet, one fault kind per scenario, and an exact account
of every reading.

    python3 tests/chaos/run.py --quick                  # CI: every scenario, short (about 3-4 min, debug build)
    python3 tests/chaos/run.py                          # the full run (about 35 min; use a release build)
    python3 tests/chaos/run.py --scenarios kill-mqtt,netcut --bin-dir /tmp/tgt-chaos/release

Each scenario runs its own `edge-dev up` (a fresh data folder) on the repository's deployment template with
the simulator stopped and AggregatorModule's query a pass-through (`SELECT * INTO Out FROM temperature`), so
every reading that reaches `$upstream` is one row of the upstream log. A fleet (tests/chaos/loadgen.py, paho)
publishes QoS 1 readings `{deviceId, seq, ...}` through a TCP proxy run here and logs each publish and each
PUBACK. A reading is *acknowledged* when its PUBACK arrived. Per scenario the harness reports readings
acknowledged, readings upstream, acknowledged readings missing upstream (must be 0), duplicates, and seconds
to recover: from the end of each fault until every reading acknowledged before that moment is upstream and a
reading acknowledged after it is upstream too (the pipeline flows again).

Faults (one scenario each):
  kill-mqtt      kill -9 of MqttServerModule at random moments (edge-dev's supervisor restarts it)
  kill-agg       kill -9 of AggregatorModule at random moments
  kill-runtime   kill -9 of edge-dev itself (its modules die with it), restarted on the same data folder
  outage         upstream link down (`edge-dev upstream offline`, the control API), a runtime restart in the
                 middle (SIGTERM, started again with --offline), then `edge-dev upstream online`
  disk-full      the data folder is a small tmpfs (root only); a file fills it, held, then deleted
  netcut         the proxy black-holes every device connection (bytes dropped both ways, new connections
                 accepted and never answered) longer than the devices' keep-alive, then resets them all
  clock-step     edge-dev and its modules run under libfaketime (FAKETIME_TIMESTAMP_FILE, wall clock only;
                 monotonic untouched); the edge's clock steps +1 h, back, -1 h, back

Exits 1 if any acknowledged reading is missing (or a scenario could not run), 0 otherwise. Every wait is
bounded; every process started here is stopped and the temporary folder removed at the end, also on failure."""

import argparse
import asyncio
import datetime as dt
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
LIBFAKETIME = [pathlib.Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
               pathlib.Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
               pathlib.Path("/usr/lib/faketime/libfaketimeMT.so.1")]
PASS_THROUGH = "SELECT * INTO Out FROM temperature"
# the pass-through row's columns come in name order: deviceId, seq, ... (a fast path; other lines go through json)
ROW = re.compile(rb'^\{"body":\{"deviceId":"([^"]+)","seq":(\d+),"temp":[^{}]*\},[^{]*"module":"AggregatorModule","output":"Out",')
ALL = ["kill-mqtt", "kill-agg", "kill-runtime", "outage", "disk-full", "netcut", "clock-step"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    res = {}
    for c in out:
        try:
            res[int(c)] = pathlib.Path(f"/proc/{c}/comm").read_text().strip()
        except OSError:
            pass
    return res


# --------------------------------------------------------------------------------------------------- proxy

class Proxy:
    """A TCP proxy on 127.0.0.1 between the devices and MqttServerModule that can black-hole everything."""

    def __init__(self, target_port):
        self.port = free_port()
        self.target = target_port
        self.cut = False
        self._entries = {}  # id -> [device writer, server writer or None]
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("proxy did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, dr, dw):
        entry = [dw, None]
        self._entries[id(entry)] = entry
        try:
            if self.cut:  # black hole: accept, never answer
                while await dr.read(65536):
                    pass
                return
            try:
                sr, sw = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.target), 5)
            except (OSError, asyncio.TimeoutError):
                dw.transport.abort()
                return
            entry[1] = sw
            await asyncio.gather(self._pipe(dr, sw, dw), self._pipe(sr, dw, sw), return_exceptions=True)
        finally:
            self._entries.pop(id(entry), None)
            for w in entry:
                if w is not None:
                    w.transport.abort()

    async def _pipe(self, r, w, other):
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                if self.cut:
                    continue  # dropped on the floor
                w.write(data)
                await w.drain()
        except (OSError, ConnectionError):
            pass
        # a real black hole passes no FIN either: hold the other side until the cut ends
        while self.cut:
            await asyncio.sleep(0.1)
        w.transport.abort()
        other.transport.abort()

    def black_hole(self):
        self.cut = True

    def restore(self):
        """End the cut: every connection that lived through it is reset (its byte stream lost bytes)."""
        def reset():
            for entry in list(self._entries.values()):
                for w in entry:
                    if w is not None:
                        w.transport.abort()
            self.cut = False
        self.loop.call_soon_threadsafe(reset)
        time.sleep(0.2)

    def close(self):
        def stop():
            self.server.close()
            for entry in list(self._entries.values()):
                for w in entry:
                    if w is not None:
                        w.transport.abort()
            self.loop.stop()
        try:
            self.loop.call_soon_threadsafe(stop)
            self.thread.join(5)
        except RuntimeError:
            pass


# ------------------------------------------------------------------------------------------------ pipeline

class Pipeline:
    """`edge-dev up` on the template (pass-through query), in `work`."""

    def __init__(self, work, bin_dir, mqtt_port, env_extra=None):
        self.work = work
        self.bin_dir = bin_dir
        self.edge_dev = bin_dir / "edge-dev"
        self.data = work / "data"
        self.data.mkdir(exist_ok=True)
        self.upstream_log = work / "upstream.jsonl"
        self.mqtt_port = mqtt_port
        self.hub_port = free_port()
        self.env_extra = env_extra or {}
        self.proc = None
        self.runs = 0
        self.pids = set()
        m = json.loads((REPO / "deployment.template.json").read_text())
        agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
        agent["modules"]["ESPSimModule"]["status"] = "stopped"
        env = agent["modules"]["MqttServerModule"].setdefault("env", {})
        env["MQTT_PORT"] = {"value": str(mqtt_port)}
        env["MQTT_BIND_ADDRESS"] = {"value": "127.0.0.1"}
        env["MQTT_METRICS_PORT"] = {"value": "0"}
        m["modulesContent"]["AggregatorModule"]["properties.desired"]["query"] = PASS_THROUGH
        self.manifest = work / "deployment.template.json"
        self.manifest.write_text(json.dumps(m, indent=2))

    def start(self, extra=()):
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        self.log_path = self.work / f"edge-dev.{self.runs}.log"
        logf = open(self.log_path, "wb")
        env = dict(os.environ)
        # AggregatorModule logs every output row at INFO: with a pass-through query that is a line per reading
        env.setdefault("RUST_LOG", "info,aggregator=warn")
        env.update(self.env_extra)
        args = [str(self.edge_dev), "--data-dir", str(self.data), "up", "--manifest", str(self.manifest),
                "--modules-dir", str(REPO / "modules"), "--bin-dir", str(self.bin_dir),
                "--upstream-log", str(self.upstream_log), "--hub-listen", f"127.0.0.1:{self.hub_port}",
                "--dashboard", "127.0.0.1:0", "--api", "127.0.0.1:0", "--quiet", *extra]
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=self.work)
        logf.close()
        self.pids.add(self.proc.pid)
        wait_until(lambda: self.proc.poll() is not None or port_open(self.mqtt_port), 90,
                   "MqttServerModule's port after edge-dev up")
        if self.proc.poll() is not None:
            raise RuntimeError(f"edge-dev exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        self.module_pids()

    def output(self):
        return "".join(p.read_text(errors="replace") for p in sorted(self.work.glob("edge-dev.*.log")))

    def module_pids(self):
        kids = children(self.proc.pid) if self.proc and self.proc.poll() is None else {}
        self.pids.update(kids)
        return kids

    def module_pid(self, comm):
        for pid, c in self.module_pids().items():
            if c.startswith(comm[:15]):
                return pid
        return None

    def kill9(self):
        kids = self.module_pids()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        # the modules must die with it (edge-dev arranges that); if not, that is a finding
        try:
            wait_until(lambda: not any(alive(p) for p in kids), 10, "the modules to die with edge-dev")
        except TimeoutError:
            left = [p for p in kids if alive(p)]
            for p in left:
                os.kill(p, signal.SIGKILL)
            raise RuntimeError(f"module processes {left} outlived kill -9 of edge-dev")
        wait_until(lambda: not port_open(self.mqtt_port), 10, "the MQTT port to close")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.module_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for p in self.pids:
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass

    def cli(self, *args, timeout=30):
        r = subprocess.run([str(self.edge_dev), "--data-dir", str(self.data), *args], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"edge-dev {' '.join(args)}: {r.stderr}")
        return r.stdout


# ---------------------------------------------------------------------------------------------- accounting

class Account:
    """Follows the fleet's sent log and the upstream log incrementally."""

    def __init__(self, sent_log, upstream_log):
        self.sent_log, self.upstream_log = sent_log, upstream_log
        self.sent_off = self.up_off = 0
        self.sent = set()
        self.acked = set()
        self.up = {}          # (device, seq) -> times seen upstream
        self.other_rows = 0
        self.ack_order = []   # acknowledged readings in the order the harness saw them

    def _lines(self, path, off):
        if not path.exists():
            return off, []
        with open(path, "rb") as f:
            f.seek(off)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return off, []
        return off + end + 1, data[:end].split(b"\n")

    def poll(self):
        self.sent_off, lines = self._lines(self.sent_log, self.sent_off)
        for ln in lines:
            kind, dev, seq = ln.decode().split(",")
            key = (dev, int(seq))
            if kind == "a":
                if key not in self.acked:
                    self.acked.add(key)
                    self.ack_order.append(key)
            else:
                self.sent.add(key)
        self.up_off, lines = self._lines(self.upstream_log, self.up_off)
        for ln in lines:
            if not ln.strip():
                continue
            m = ROW.search(ln)
            if m:
                key = (m.group(1).decode(), int(m.group(2)))
                self.up[key] = self.up.get(key, 0) + 1
                continue
            row = json.loads(ln)
            b = row.get("body")
            if row.get("output") == "Out" and isinstance(b, dict) and "deviceId" in b and "seq" in b:
                key = (b["deviceId"], int(b["seq"]))
                self.up[key] = self.up.get(key, 0) + 1
            else:
                self.other_rows += 1

    def missing(self, keys=None):
        return [k for k in (self.acked if keys is None else keys) if k not in self.up]

    def summary(self):
        self.poll()
        missing = sorted(self.missing())
        return {
            "sent": len(self.sent), "acknowledged": len(self.acked), "upstream": len(self.up),
            "missing": len(missing), "missing_sample": missing[:10],
            "duplicates": sum(n - 1 for n in self.up.values()),
            "unacked_upstream": sum(1 for k in self.up if k not in self.acked),
            "other_rows": self.other_rows,
        }

    def recovery(self, fault_end_wall, fault_end_mono, timeout):
        """Seconds from the end of a fault until every reading acknowledged by then is upstream and a reading
        acknowledged after it is upstream too; None on timeout."""
        self.poll()
        before = set(self.acked)
        n_before = len(self.ack_order)
        deadline = fault_end_mono + timeout
        while time.monotonic() < deadline:
            self.poll()
            before = {k for k in before if k not in self.up}
            fresh = any(k in self.up for k in self.ack_order[n_before:])
            if not before and fresh:
                return time.monotonic() - fault_end_mono
            time.sleep(0.25)
        return None


class Load:
    def __init__(self, work, port, devices, rate, prefix="chaos"):
        self.sent_log = work / "sent.log"
        self.out = open(work / "loadgen.out", "wb")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "loadgen.py"), "--port", str(port),
                                      "--devices", str(devices), "--rate", str(rate), "--sent-log", str(self.sent_log),
                                      "--prefix", prefix, "--keepalive", "5"],
                                     stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


# ----------------------------------------------------------------------------------------------- scenarios

class Unrecovered(Exception):
    """The pipeline did not recover from a fault: more faults would tell nothing."""


class Scenario:
    def __init__(self, name, cfg, bin_dir, root, rng):
        self.name, self.cfg, self.rng = name, cfg, rng
        self.work = root / name
        self.work.mkdir()
        self.bin_dir = bin_dir
        self.recoveries = []
        self.faults = 0
        self.notes = []
        self.mounted = None
        self.proxy = self.pipe = self.load = None

    def setup(self, env_extra=None, tmpfs_mb=None, extra=()):
        if tmpfs_mb:
            data = self.work / "data"
            data.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m", "tmpfs", str(data)], check=True)
            self.mounted = data
        mqtt_port = free_port()
        self.pipe = Pipeline(self.work, self.bin_dir, mqtt_port, env_extra)
        self.pipe.start(extra)
        self.proxy = Proxy(mqtt_port)
        self.load = Load(self.work, self.proxy.port, self.cfg["devices"], self.cfg["rate"])
        self.acct = Account(self.load.sent_log, self.pipe.upstream_log)
        wait_until(lambda: (self.acct.poll(), self.acct.up)[1], 60, "the first reading upstream")
        time.sleep(self.cfg["warmup"])

    def recovered(self, t_mono, timeout=None):
        r = self.acct.recovery(time.time(), t_mono, timeout or self.cfg["recover_timeout"])
        self.faults += 1
        self.recoveries.append(r)
        log(f"  {self.name}: fault {self.faults} recovered in " + (f"{r:.1f} s" if r is not None else "NEVER (timeout)"))
        if r is None:
            self.notes.append(f"no recovery within {timeout or self.cfg['recover_timeout']:.0f} s of fault {self.faults}; "
                              "no further faults injected")
            raise Unrecovered()
        return r

    def pause(self):
        lo, hi = self.cfg["gap"]
        time.sleep(self.rng.uniform(lo, hi))

    def finish(self):
        self.load.stop()
        # everything acknowledged must arrive; bounded
        try:
            wait_until(lambda: (self.acct.poll(), not self.acct.missing())[1], self.cfg["drain_timeout"],
                       "every acknowledged reading upstream", interval=0.5)
        except TimeoutError as e:
            self.notes.append(str(e))
        time.sleep(1.0)  # late duplicates
        res = self.acct.summary()
        out = self.pipe.output()
        res["panics"] = out.count("panicked")
        res["module_restarts"] = out.count("restarting in")
        return res

    def teardown(self):
        for step in (lambda: self.load and self.load.stop(), lambda: self.pipe and self.pipe.stop(),
                     lambda: self.proxy and self.proxy.close()):
            try:
                step()
            except Exception as e:  # keep tearing down
                self.notes.append(f"teardown: {e}")
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mounted)], check=False)


def kill_module(s, comm, module):
    for _ in range(s.cfg["kills"]):
        s.pause()
        pid = wait_until(lambda: s.pipe.module_pid(comm), 60, f"{module} running")
        os.kill(pid, signal.SIGKILL)
        t = time.monotonic()
        log(f"  kill -9 {module} (pid {pid})")
        # the fault ends when the supervisor has a new process running
        wait_until(lambda: (s.pipe.module_pid(comm) or pid) != pid, 90, f"{module} restarted")
        s.recovered(t)


def sc_kill_mqtt(s):
    s.setup()
    kill_module(s, "mqtt-server", "MqttServerModule")


def sc_kill_agg(s):
    s.setup()
    kill_module(s, "aggregator", "AggregatorModule")


def sc_kill_runtime(s):
    s.setup()
    for _ in range(s.cfg["kills"]):
        s.pause()
        s.pipe.kill9()
        log("  kill -9 edge-dev; restarting it on the same data folder")
        s.pipe.start()
        s.recovered(time.monotonic())


def sc_outage(s):
    s.setup()
    half = s.cfg["outage"] / 2
    s.pipe.cli("upstream", "offline")
    s.acct.poll()
    up_before = len(s.acct.up)
    log(f"  upstream offline for {s.cfg['outage']:.0f} s, restart after {half:.0f} s")
    time.sleep(half)
    s.pipe.stop()
    s.pipe.start(["--offline"])
    time.sleep(half)
    s.acct.poll()
    leaked = len(s.acct.up) - up_before
    # a few rows may have been in flight when the link went down
    if leaked > s.cfg["rate"]:
        s.notes.append(f"{leaked} rows reached the upstream log while the link was offline")
    log(f"  held {len(s.acct.acked) - len(s.acct.up)} readings; upstream online")
    s.pipe.cli("upstream", "online")
    s.recovered(time.monotonic(), timeout=max(s.cfg["recover_timeout"], s.cfg["outage"]))
    s.cfg = dict(s.cfg, drain_timeout=max(s.cfg["drain_timeout"], s.cfg["outage"] / 2))


def sc_disk_full(s):
    s.setup(tmpfs_mb=s.cfg["tmpfs_mb"])
    for i in range(s.cfg["disk_fills"]):
        s.pause()
        filler = s.mounted / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        s.acct.poll()
        acked_at_full = len(s.acct.acked)
        log(f"  data folder full ({s.cfg['tmpfs_mb']} MB tmpfs) for {s.cfg['disk_hold']:.0f} s")
        time.sleep(s.cfg["disk_hold"])
        s.acct.poll()
        s.notes.append(f"fill {i + 1}: {len(s.acct.acked) - acked_at_full} readings acknowledged while full")
        filler.unlink()
        s.recovered(time.monotonic())
    if s.pipe.proc.poll() is not None:
        s.notes.append(f"edge-dev exited with {s.pipe.proc.returncode}")


def sc_netcut(s):
    s.setup()
    for _ in range(s.cfg["cuts"]):
        s.pause()
        s.proxy.black_hole()
        log(f"  device network black-holed for {s.cfg['cut_hold']:.0f} s")
        time.sleep(s.cfg["cut_hold"])
        s.proxy.restore()
        s.recovered(time.monotonic())


def faketime_lib():
    for p in LIBFAKETIME:
        if p.exists():
            return p
    return None


def sc_clock_step(s):
    lib = faketime_lib()
    if lib is None:
        raise RuntimeError("libfaketime is not installed (apt-get install libfaketime)")
    ft = s.work / "faketime"
    ft.write_text("+0\n")
    s.setup(env_extra={"LD_PRELOAD": str(lib), "FAKETIME_TIMESTAMP_FILE": str(ft), "FAKETIME_CACHE_DURATION": "1",
                       "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_RESET": "1"})
    for offset in ("+3600", "+0", "-3600", "+0"):
        s.pause()
        ft.write_text(offset + "\n")
        time.sleep(1.2)  # the cache duration: every process sees the step within a second
        log(f"  edge clock stepped to real time {offset} s")
        s.recovered(time.monotonic())
        time.sleep(s.cfg["clock_hold"])


SCENARIOS = {"kill-mqtt": sc_kill_mqtt, "kill-agg": sc_kill_agg, "kill-runtime": sc_kill_runtime,
             "outage": sc_outage, "disk-full": sc_disk_full, "netcut": sc_netcut, "clock-step": sc_clock_step}

QUICK = dict(devices=10, rate=100, warmup=3, gap=(1, 4), kills=2, recover_timeout=40, drain_timeout=40,
             outage=20, tmpfs_mb=16, disk_fills=1, disk_hold=8, cuts=1, cut_hold=14, clock_hold=2)
FULL = dict(devices=20, rate=100, warmup=10, gap=(5, 40), kills=5, recover_timeout=180, drain_timeout=300,
            outage=600, tmpfs_mb=24, disk_fills=3, disk_hold=45, cuts=3, cut_hold=45, clock_hold=30)


def table(results):
    head = ("scenario", "faults", "acknowledged", "upstream", "acked missing", "duplicates",
            "recover s (median / max)", "notes")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | - | - | - | - | - | - | ERROR: {r['error']} |")
            continue
        rec = [x for x in r["recoveries"] if x is not None]
        never = len(r["recoveries"]) - len(rec)
        rs = sorted(rec)
        recs = f"{rs[len(rs) // 2]:.1f} / {rs[-1]:.1f}" if rs else "-"
        if never:
            recs += f" ({never} never)"
        notes = "; ".join(r["notes"] + ([f"{r['panics']} panics"] if r["panics"] else []))
        rows.append(f"| {name} | {r['faults']} | {r['acknowledged']} | {r['upstream']} | {r['missing']} | "
                    f"{r['duplicates']} | {recs} | {notes} |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short faults, for CI")
    p.add_argument("--scenarios", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL))
    p.add_argument("--bin-dir", default=os.environ.get("EDGE_DEV_BIN_DIR", str(REPO / "target" / "debug")))
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, sent and upstream logs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    args = p.parse_args()

    cfg = dict(QUICK if args.quick else FULL)
    for kv in args.set:
        k, v = kv.split("=", 1)
        cfg[k] = type(cfg[k])(v) if not isinstance(cfg[k], tuple) else tuple(float(x) for x in v.split(","))
    bin_dir = pathlib.Path(args.bin_dir).resolve()
    if not (bin_dir / "edge-dev").exists():
        print(f"{bin_dir}/edge-dev is missing: build with cargo build --bins -p edge-dev -p mqtt-server -p aggregator",
              file=sys.stderr)
        return 2
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    for n in names:
        if n not in SCENARIOS:
            print(f"unknown scenario {n}; known: {', '.join(ALL)}", file=sys.stderr)
            return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    root = pathlib.Path(tempfile.mkdtemp(prefix="edge-chaos-"))
    log(f"chaos {'--quick' if args.quick else 'full run'}: seed {seed}, binaries {bin_dir}, work {root}")
    log(f"settings: {cfg}")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    results = {}
    started = time.monotonic()
    try:
        for n in names:
            s = Scenario(n, cfg, bin_dir, root, rng)
            t0 = time.monotonic()
            log(f"scenario {n}")
            try:
                try:
                    SCENARIOS[n](s)
                except Unrecovered:
                    pass
                r = s.finish()
                r.update(faults=s.faults, recoveries=s.recoveries, notes=s.notes, seconds=round(time.monotonic() - t0, 1))
            except KeyboardInterrupt:
                raise
            except Exception as e:
                r = {"error": f"{type(e).__name__}: {e}"}
                try:
                    r["edge_dev_tail"] = s.pipe.output()[-2000:] if s.pipe else ""
                except Exception:
                    pass
            finally:
                s.teardown()
            results[n] = r
            log(f"  {n}: " + json.dumps({k: v for k, v in r.items() if k != "edge_dev_tail"}))
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    total = time.monotonic() - started
    print()
    print(table(results))
    print(f"\n{len(results)} scenarios in {total:.0f} s (seed {seed})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"seed": seed, "settings": cfg, "seconds": round(total),
                                                       "date": dt.datetime.now(dt.timezone.utc).isoformat(),
                                                       "results": results}, indent=2, default=str))
    bad = [n for n, r in results.items() if "error" in r or r.get("missing")]
    if bad:
        print(f"FAILED: {', '.join(bad)}", file=sys.stderr)
        for n in bad:
            if "edge_dev_tail" in results[n]:
                print(f"--- {n}: edge-dev said:\n{results[n]['edge_dev_tail']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
