"""The benchmark run behind scripts/bench.sh: the pipeline's throughput, latency and footprint, side by side
with the peers a user would pick instead (Mosquitto for MQTT ingest, bytewax and DuckDB for windowed
aggregation), on this machine, in one run. Writes bench/results/<date>.json and prints a table.

Sections (each figure is the median of several runs, with min and max):
1. end to end: esp-sim load mode -> MqttServerModule -> edge-dev hub -> AggregatorModule -> upstream log,
   QoS 1, as shipped and with AGGREGATOR_TICK_MS=10. A 1-second COUNT(*) query counts every message that
   reached AggregatorModule; a run keeps up when every acknowledged message is counted upstream within
   8 s of the end of sending, none of them late (more than 5 s), and esp-sim achieved >= 95 % of the
   target (see e2e_trial); the highest rate that kept up in every run is the sustained rate, and what
   the runs that did not keep up carried is reported too. Latency: a pass-through query
   (`SELECT * INTO Out FROM temperature`) at a fixed rate; each upstream message's `enqueuedTime` (when
   the hub put it in the $upstream queue) minus the payload's `timecreated` (when esp-sim made it).
2. MQTT ingest: the same esp-sim load against MqttServerModule (`--sink stdout`, no edgeHub, acknowledges
   once the sink took the message) and Mosquitto (with one QoS 1 subscriber, mosquitto_sub, taking every
   message, the equivalent of a forwarder); messages/s at saturation, and CPU at a fixed rate.
3. aggregation: `aggregator replay` (the stream-query engine) vs bytewax and DuckDB over the same generated
   events files, three workloads (AGG_WORKLOADS): A the seed's 60 s tumbling-window average (200 devices),
   B per-device avg/max/count in 60 s tumbling windows (1,000 devices), C the same in 60 s windows hopping
   by 10 s (10,000 devices); the three outputs of each are compared.
4. footprint: RSS idle and under load, CPU per 1,000 msg/s, binary and image sizes.
5. patient groups: the pipeline with a per-device 60 s window (GROUPS_QUERY) and 1,000 then 10,000 devices
   at a fixed total rate: AggregatorModule's CPU, RSS, bytes written to disk per message and state folder,
   the hub's bytes written per message, and whether every window came out.

Everything listens on 127.0.0.1 only; every wait is bounded. Usage: see scripts/bench.sh.
"""

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

COUNT_QUERY = ("SELECT COUNT(*) AS n, System.Timestamp() AS windowEnd INTO Counts FROM temperature "
               "TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,1)")
PASS_QUERY = "SELECT * INTO Out FROM temperature"
SEED_QUERY = 'SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)'


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc, timeout=20):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def spread(values):
    """Median with min, max and the runs themselves."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": values}


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


# ---------------------------------------------------------------- process sampling (/proc)

def proc_cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15 of stat)
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return None


def proc_io(pid):
    """/proc/<pid>/io of a process (all its threads): rchar/wchar (bytes passed to read/write calls, page cache
    included) and read_bytes/write_bytes (bytes the process caused to be fetched from / sent to the storage
    layer: for writes, counted when a page is dirtied, so rewriting a page after each fsync counts it again)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}
    except (OSError, ValueError):
        return None


def io_delta(a, b):
    if not a or not b:
        return None
    return {k: b[k] - a[k] for k in ("rchar", "wchar", "read_bytes", "write_bytes", "cancelled_write_bytes") if k in a}


def dir_size(path):
    """Bytes (apparent size) and files under a folder, or None if there is none."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return None
    total, files = 0, 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
                files += 1
        except OSError:
            pass
    return {"bytes": total, "files": files}


class Sampler:
    """Samples CPU ticks and RSS of named processes every `interval` s on a thread, between start() and
    stop(). cpu_s(name) is the CPU time used in between, rss_max_kb(name) the peak RSS seen."""

    def __init__(self, pids, interval=0.2):
        self.pids = dict(pids)
        self.interval = interval
        self.rss = {n: [] for n in self.pids}
        self.t0 = {}
        self.t1 = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        for n, pid in self.pids.items():
            r = proc_rss_kb(pid)
            if r is not None:
                self.rss[n].append(r)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self):
        self.wall0 = time.monotonic()
        self.t0 = {n: proc_cpu_ticks(p) for n, p in self.pids.items()}
        self._sample()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        self.t1 = {n: proc_cpu_ticks(p) for n, p in self.pids.items()}
        self.wall = time.monotonic() - self.wall0
        return self

    def cpu_s(self, name):
        a, b = self.t0.get(name), self.t1.get(name)
        return None if a is None or b is None else (b - a) / CLK_TCK

    def cpu_pct(self, name):
        c = self.cpu_s(name)
        return None if c is None else 100.0 * c / self.wall

    def rss_max_kb(self, name):
        return max(self.rss[name]) if self.rss[name] else None

    def rss_last_kb(self, name):
        return self.rss[name][-1] if self.rss[name] else None


# ---------------------------------------------------------------- load generator

def esp_sim(bins, port, devices, rate, duration, prefix, qos=1):
    """One esp-sim load run; returns its JSON summary plus the wall-clock span of the run."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ESP_SIM_") or k.startswith("MQTT_") or k.startswith("IOTEDGE_")
                   or k in ("EdgeHubConnectionString", "EdgeModuleCACertificateFile"))}
    env["RUST_LOG"] = "warn"
    cmd = [str(bins / "esp-sim"), "--host", "127.0.0.1", "--port", str(port), "--mode", "load",
           "--devices", str(devices), "--rate", str(rate), "--duration", str(duration), "--qos", str(qos),
           "--client-id", prefix]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    pid = p.pid
    try:
        out, err = p.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"esp-sim did not finish within {duration + 60} s: {err[-2000:]}")
    t1 = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"esp-sim exited with {p.returncode}: {err[-2000:]}")
    summary = json.loads(out)
    summary["_t0"], summary["_t1"], summary["_pid"] = t0, t1, pid
    return summary


def esp_sim_sampled(bins, port, devices, rate, duration, prefix, pids):
    """esp-sim while sampling `pids` (name -> pid) and esp-sim itself (name "esp-sim")."""
    result = {}

    def body():
        result["summary"] = esp_sim(bins, port, devices, rate, duration, prefix)

    sampler = Sampler(pids).start()
    t = threading.Thread(target=body)
    t.start()
    # esp-sim's own pid: the newest child of ours called esp-sim.
    sim_ticks0, sim_pid = None, None
    deadline = time.time() + 5
    while time.time() < deadline and sim_pid is None:
        for pid in child_pids(os.getpid()):
            if comm(pid) == "esp-sim":
                sim_pid, sim_ticks0 = pid, proc_cpu_ticks(pid)
                break
        time.sleep(0.05)
    sim_ticks1, sim_rss = None, []
    while t.is_alive():
        if sim_pid is not None:
            v = proc_cpu_ticks(sim_pid)
            if v is not None:
                sim_ticks1 = v
            r = proc_rss_kb(sim_pid)
            if r is not None:
                sim_rss.append(r)
        t.join(timeout=0.2)
    sampler.stop()
    if "summary" not in result:
        raise RuntimeError("esp-sim run failed (see above)")
    s = result["summary"]
    s["_sim_cpu_s"] = None if sim_ticks0 is None or sim_ticks1 is None else (sim_ticks1 - sim_ticks0) / CLK_TCK
    s["_sim_rss_max_kb"] = max(sim_rss) if sim_rss else None
    return s, sampler


def child_pids(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out if x.isdigit()]


def comm(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


# ---------------------------------------------------------------- edge-dev

class EdgeDev:
    def __init__(self, bins, workdir, query, mqtt_port, aggregator_env=None, mqtt_env=None):
        self.bins = bins
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mqtt_port = mqtt_port
        self.hub_port = free_port()
        self.upstream_log = self.workdir / "upstream.jsonl"
        m = json.loads((REPO / "deployment.template.json").read_text())
        agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
        # The benchmark runs esp-sim itself (the ESPSimModule binary, load mode) so that it can count.
        agent["modules"]["ESPSimModule"]["status"] = "stopped"
        env = agent["modules"]["MqttServerModule"].setdefault("env", {})
        env["MQTT_PORT"] = {"value": str(mqtt_port)}
        env["MQTT_BIND_ADDRESS"] = {"value": "127.0.0.1"}
        env["MQTT_METRICS_PORT"] = {"value": "0"}
        for k, v in (mqtt_env or {}).items():
            env[k] = {"value": str(v)}
        m["modulesContent"]["AggregatorModule"]["properties.desired"]["query"] = query
        if aggregator_env:
            aenv = agent["modules"]["AggregatorModule"].setdefault("env", {})
            for k, v in aggregator_env.items():
                aenv[k] = {"value": str(v)}
        self.manifest = self.workdir / "deployment.template.json"
        self.manifest.write_text(json.dumps(m, indent=2))
        self.proc = None

    def start(self):
        args = [str(self.bins / "edge-dev"), "--data-dir", str(self.workdir / "data"), "up",
                "--manifest", str(self.manifest), "--modules-dir", str(REPO / "modules"),
                "--bin-dir", str(self.bins), "--upstream-log", str(self.upstream_log),
                "--hub-listen", f"127.0.0.1:{self.hub_port}", "--no-dashboard", "--quiet"]
        env = dict(os.environ)
        env["RUST_LOG"] = "warn"
        self.log = open(self.workdir / "edge-dev.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=self.workdir)
        wait_port(self.hub_port, 60, self.proc)
        wait_port(self.mqtt_port, 60, self.proc)
        # The processes: edge-dev (the hub) and its module children.
        self.pids = {"edge-dev hub": self.proc.pid}
        deadline = time.time() + 30
        while time.time() < deadline:
            for pid in child_pids(self.proc.pid):
                c = comm(pid)
                if c == "mqtt-server":
                    self.pids["MqttServerModule"] = pid
                elif c == "aggregator":
                    self.pids["AggregatorModule"] = pid
            if len(self.pids) == 3:
                break
            time.sleep(0.2)
        if len(self.pids) != 3:
            raise RuntimeError(f"edge-dev did not start both modules: {self.pids}; log: {self.output()[-3000:]}")
        return self

    def output(self):
        p = self.workdir / "edge-dev.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self):
        stop(self.proc, timeout=30)
        self.log.close()

    def upstream(self):
        if not self.upstream_log.exists():
            return []
        rows = []
        with open(self.upstream_log) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written right now
        return rows


def parse_time(s):
    s = s.replace("Z", "+00:00")
    if "." in s:  # Python 3.11 reads at most 6 fraction digits
        head, rest = s.split(".", 1)
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        s = f"{head}.{rest[:min(i, 6)]}{rest[i:]}"
    return dt.datetime.fromisoformat(s)


def counted(edge, t0, t1):
    """Sum of n over Counts windows ending after t0, the start of this run (the runs follow each other and a
    run's backlog is drained, or edge-dev restarted, before the next starts). No upper bound: an event that
    reaches AggregatorModule more than the late-arrival tolerance (5 s) after its time is counted in a later
    window (policy Adjust), which still counts it. Windows end at most ~1 s before t1 + 1 s otherwise."""
    lo = dt.datetime.fromtimestamp(t0, dt.timezone.utc)
    hi = dt.datetime.fromtimestamp(t1 + 3600, dt.timezone.utc)
    n = 0
    for r in edge.upstream():
        if r.get("output") != "Counts":
            continue
        body = r.get("body") or {}
        end = body.get("windowEnd") or (r.get("properties") or {}).get("timestamp")
        if end is None:
            continue
        if lo < parse_time(end) <= hi:
            n += int(body.get("n", 0))
    return n


def e2e_devices(rate, cap):
    """Devices for a rate: each sends at most 5 messages/s, at most `cap` devices."""
    return max(1, min(cap, rate // 5))


def e2e_trial(edge, bins, rate, duration, devices, tag, keep_up_s=8, drain_s=60):
    """One load run through the pipeline. The pipeline kept up with the rate when (a) everything acknowledged
    was counted upstream within `keep_up_s` of the end of sending (the last window closes ~6 s after its
    end: the 5 s late-arrival tolerance, the 1 s window, the tick), and (b) no message was counted in a
    window ending after the end of sending: a message that reaches AggregatorModule more than 5 s after it
    was made is late, and the policy (Adjust) moves it to a window of its arrival time minus 5 s. So (b)
    fails as soon as the backlog is more than 5 s deep; over a run of `duration` s that bounds the rate to
    (1 + 5/duration) x what the pipeline can carry. Then it waits up to `drain_s` more for a backlog, so
    that lag and loss can be told apart."""
    s, sampler = esp_sim_sampled(bins, edge.mqtt_port, devices, rate, duration, tag, edge.pids)
    acked = s["acked"]
    in_time_deadline = s["_t1"] + keep_up_s
    got = counted(edge, s["_t0"], s["_t1"])
    while got < acked and time.time() < in_time_deadline:
        time.sleep(0.5)
        got = counted(edge, s["_t0"], s["_t1"])
    got_in_time = got
    drain_deadline = time.time() + drain_s
    while got < acked and time.time() < drain_deadline:
        time.sleep(1.0)
        got = counted(edge, s["_t0"], s["_t1"])
    time.sleep(1.0)
    got = counted(edge, s["_t0"], s["_t1"])
    late = counted(edge, s["_t1"] + 1.5, s["_t1"])
    achieved = s["achieved_rate"]
    lost = max(0, acked - got)
    ok = got_in_time >= acked and late == 0 and s["unacked"] == 0 and achieved >= 0.95 * rate
    trial = {
        "target_rate": rate, "devices": devices, "duration_s": duration,
        "achieved_rate": round(achieved, 1), "published": s["published"], "acked": acked,
        "unacked": s["unacked"], "counted_in_time": got_in_time, "counted_upstream": got, "counted_late": late, "lost": lost,
        "duplicates": max(0, got - acked), "drained": got >= acked,
        "ack_latency_us": s.get("latency_us"), "sustained_zero_loss": ok,
        "cpu_pct": {n: sampler.cpu_pct(n) for n in edge.pids},
        "rss_max_kb": {n: sampler.rss_max_kb(n) for n in edge.pids},
        "esp_sim_cpu_s": s["_sim_cpu_s"], "esp_sim_rss_max_kb": s["_sim_rss_max_kb"],
        "window_s": round(sampler.wall, 2),
    }
    log(f"  e2e {rate:>6}/s x {devices:>3} devices: achieved {achieved:8.1f}/s acked {acked} counted in {keep_up_s} s "
        f"{got_in_time}, after {drain_s} s more {got} (lost {lost}, late {late}) unacked {s['unacked']} -> {'ok' if ok else 'FAIL'}")
    return trial


def bench_e2e(bins, work, args, name, rates, aggregator_env, footprint_rate):
    log(f"== 1. end to end ({name}): esp-sim -> MqttServerModule -> hub -> AggregatorModule -> upstream (QoS 1)")
    n_edge = [0]

    def fresh_edge():
        n_edge[0] += 1
        return EdgeDev(bins, work / f"e2e-{name}-{n_edge[0]}", COUNT_QUERY, free_port(), aggregator_env).start()

    edge = fresh_edge()
    out = {"config": name, "aggregator_env": aggregator_env, "query": COUNT_QUERY,
           "max_devices": args.e2e_devices, "trial_duration_s": args.e2e_duration}
    k = [0]

    def trial(rate):
        nonlocal edge
        k[0] += 1
        t = e2e_trial(edge, bins, rate, args.e2e_duration, e2e_devices(rate, args.e2e_devices), f"e2e{k[0]}-")
        if not t["drained"]:  # a backlog would slow the next run: start again on a fresh hub store
            log("  backlog not drained: restarting edge-dev on a fresh data folder")
            edge.stop()
            edge = fresh_edge()
        return t

    try:
        time.sleep(2)
        idle = Sampler(edge.pids).start()
        time.sleep(3)
        idle.stop()
        out["idle_rss_kb"] = {n: idle.rss_max_kb(n) for n in edge.pids}
        out["idle_cpu_pct"] = {n: idle.cpu_pct(n) for n in edge.pids}
        ladder = []
        best, first_fail = None, None
        for rate in rates:
            t = trial(rate)
            ladder.append(t)
            if t["sustained_zero_loss"]:
                best = rate
            else:
                first_fail = rate
                break
        if best is not None and first_fail is not None and first_fail > best * 1.3:
            mid = int(round((best + first_fail) / 2))
            t = trial(mid)
            ladder.append(t)
            if t["sustained_zero_loss"]:
                best = mid
        out["ladder"] = ladder
        # Repeat the best rate: the sustained rate's figures are medians over these runs. If a repeat does
        # not keep up, step down (half way to the next lower rate that kept up, then that rate) and repeat.
        passed = sorted({t["target_rate"] for t in ladder if t["sustained_zero_loss"]}, reverse=True)
        candidates = []
        for i, r in enumerate(passed):
            candidates.append(r)
            if i + 1 < len(passed):
                candidates.append(int(round((r + passed[i + 1]) / 2)))
        confirm, n_ladder = [], 0
        for cand in candidates:
            best = cand
            confirm = [t for t in ladder if t["target_rate"] == cand]
            n_ladder = len(confirm)
            while len(confirm) < args.runs and all(t["sustained_zero_loss"] for t in confirm):
                t = trial(cand)
                confirm.append(t)
                ladder.append(t)
            if confirm and all(t["sustained_zero_loss"] for t in confirm):
                break
            log(f"  {cand} msg/s did not keep up in every run: stepping down")
        if not candidates:
            best = None
        out["max_sustained_rate"] = best
        out["first_failing_rate"] = first_fail
        out["carried_under_overload"] = carried_under_overload(ladder)
        names = ["MqttServerModule", "edge-dev hub", "AggregatorModule"]
        if confirm:
            out["at_max"] = {
                "runs_zero_loss": sum(1 for t in confirm if t["sustained_zero_loss"]),
                "runs": len(confirm),
                "achieved_rate": spread([t["achieved_rate"] for t in confirm]),
                "lost": spread([t["lost"] for t in confirm]),
                "ack_p50_us": spread([(t["ack_latency_us"] or {}).get("p50") for t in confirm]),
                "ack_p99_us": spread([(t["ack_latency_us"] or {}).get("p99") for t in confirm]),
                "rss_max_kb": {n: spread([t["rss_max_kb"].get(n) for t in confirm]) for n in names},
            }
        # Footprint: CPU per 1,000 msg/s of each process, from separate runs at a fixed rate if asked for,
        # else from the runs at the highest sustained rate.
        fixed = [trial(footprint_rate) for _ in range(args.runs)] if footprint_rate else confirm
        if fixed:
            footprint_rate = fixed[0]["target_rate"]

            def per_k(t, n):
                c = t["cpu_pct"].get(n)
                return None if c is None or not t["achieved_rate"] else round(c / (t["achieved_rate"] / 1000.0), 2)

            out["fixed_rate"] = {
                "rate": footprint_rate,
                "zero_loss_runs": sum(1 for t in fixed if t["sustained_zero_loss"]),
                "cpu_pct_per_1000_msgs": {n: spread([per_k(t, n) for t in fixed]) for n in names},
                "esp_sim_cpu_pct_per_1000_msgs": spread([
                    None if t["esp_sim_cpu_s"] is None else
                    round(100.0 * t["esp_sim_cpu_s"] / t["window_s"] / (t["achieved_rate"] / 1000.0), 2) for t in fixed]),
                "rss_max_kb": {n: spread([t["rss_max_kb"].get(n) for t in fixed]) for n in names},
                "esp_sim_rss_max_kb": spread([t["esp_sim_rss_max_kb"] for t in fixed]),
                "trials": fixed,
            }
    finally:
        edge.stop()
    return out


def carried_under_overload(ladder, keep_up_s=8):
    """What the pipeline carried in the runs that did not keep up: messages counted within `keep_up_s` of
    the end of sending over the run plus those seconds (its carrying capacity when overloaded)."""
    vals = [round(t["counted_in_time"] / (t["duration_s"] + keep_up_s), 1)
            for t in ladder if not t["sustained_zero_loss"] and t.get("counted_in_time") is not None]
    return spread(vals) if vals else None


def bench_latency(bins, work, args, name, aggregator_env, rate, devices):
    log(f"== 1b. end to end latency ({name}) at {rate} msg/s (pass-through query)")
    edge = EdgeDev(bins, work / f"latency-{name}", PASS_QUERY, free_port(), aggregator_env).start()
    runs = []
    try:
        time.sleep(2)
        for k in range(args.runs):
            tag = f"lat{k}-"
            s = esp_sim(bins, edge.mqtt_port, devices, rate, args.latency_duration, tag)
            deadline = time.time() + 30

            def mine():
                return [r for r in edge.upstream() if r.get("output") == "Out"
                        and str((r.get("body") or {}).get("deviceId", "")).startswith(tag)]

            rows = mine()
            while len(rows) < s["acked"] and time.time() < deadline:
                time.sleep(0.5)
                rows = mine()
            lat = []
            for r in rows:
                body = r.get("body") or {}
                tc = body.get("timecreated") or body.get("timeCreated")
                if tc and r.get("enqueuedTime"):
                    lat.append((parse_time(r["enqueuedTime"]) - parse_time(tc)).total_seconds() * 1000.0)
            lat.sort()
            run = {"acked": s["acked"], "upstream": len(rows), "achieved_rate": round(s["achieved_rate"], 1),
                   "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
                   "max_ms": lat[-1] if lat else None}
            log(f"  latency run {k + 1}: {len(rows)}/{s['acked']} upstream, p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms")
            runs.append(run)
    finally:
        edge.stop()
    return {
        "config": name, "aggregator_env": aggregator_env, "query": PASS_QUERY, "rate": rate, "devices": devices,
        "duration_s": args.latency_duration,
        "how": "upstream enqueuedTime (hub puts the row in $upstream) minus the payload's timecreated (esp-sim made the "
               "reading); both millisecond clocks of this machine",
        "p50_ms": spread([r["p50_ms"] for r in runs]), "p99_ms": spread([r["p99_ms"] for r in runs]),
        "runs": runs,
    }


GROUPS_QUERY = ("SELECT deviceId, Avg(temp) AS avg, Max(temp) AS max, Count(*) AS n, System.Timestamp() AS windowEnd "
                "INTO PatientAvg FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, TumblingWindow(second,60)")


def patient_rows(edge, prefix):
    """Sum of n and number of rows over the PatientAvg rows upstream of devices whose id starts with `prefix`."""
    n, rows = 0, 0
    for r in edge.upstream():
        if r.get("output") != "PatientAvg":
            continue
        body = r.get("body") or {}
        if str(body.get("deviceId", "")).startswith(prefix):
            n += int(body.get("n", 0))
            rows += 1
    return n, rows


def bench_groups(bins, work, args):
    """Section 5: the pipeline with many patient groups. edge-dev runs the template with AggregatorModule's query
    replaced by GROUPS_QUERY (one 60 s window per device); esp-sim (load mode) sends a fixed total rate from
    1,000 and then 10,000 devices (one MQTT connection each). Per run: AggregatorModule's CPU per 1,000 msg/s
    (over the sending; `cpu_s_whole_run` also counts the closing of the windows), its RSS, the bytes it and the hub wrote (/proc/<pid>/io, from just before the sending
    until every window of the run came out) per message, and the size of its state folder; and whether every
    acknowledged message was counted in a window upstream (sum of n)."""
    rate = args.groups_rate
    log(f"== 5. many patient groups: {GROUPS_QUERY}")
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        soft = hard = None
    out = {"query": GROUPS_QUERY, "rate": rate, "duration_s": args.groups_duration, "runs": args.runs,
           "nofile_limit": [soft, hard], "by_devices": {},
           "how": "esp-sim --mode load --devices N --rate R --qos 1 (one MQTT connection per device, a message every "
                  "N/R s per device) through MqttServerModule -> hub -> AggregatorModule -> upstream. CPU from "
                  "/proc/<pid>/stat over the sending; write_bytes/wchar from /proc/<pid>/io from just before the "
                  "sending until every window of the run is upstream, divided by the messages counted upstream "
                  "(sum of n, = the messages AggregatorModule received). write_bytes is what reached the storage "
                  "layer (a page counts each time it is dirtied again after a writeback); wchar counts every "
                  "write/send call, sockets included (TLS to the hub); the state folder is AggregatorModule's "
                  "AGGREGATOR_STATE_DIR (default ./aggregator-state in its working folder, "
                  "<data>/modules/AggregatorModule under edge-dev)"}
    names = ["MqttServerModule", "edge-dev hub", "AggregatorModule"]
    for devices in [int(x) for x in args.groups_devices.split(",") if x]:
        log(f"  {devices:,} devices at {rate:,} msg/s ({devices / rate:.2f} s between two messages of a device), "
            f"{args.groups_duration} s per run")
        edge = EdgeDev(bins, work / f"groups-{devices}", GROUPS_QUERY, free_port(),
                       mqtt_env={"MQTT_MAX_CONNECTIONS": devices + 100})
        rec = {"devices": devices, "runs": []}
        out["by_devices"][str(devices)] = rec
        try:
            edge.start()
            state_dir = edge.workdir / "data" / "modules" / "AggregatorModule" / "aggregator-state"
            rec["state_dir"] = str(state_dir.relative_to(edge.workdir))
            time.sleep(2)
            idle = Sampler(edge.pids).start()
            time.sleep(3)
            idle.stop()
            rec["idle_rss_kb"] = {n: idle.rss_max_kb(n) for n in edge.pids}
            for k in range(args.runs):
                tag = f"g{devices}r{k}"
                io0 = {n: proc_io(pid) for n, pid in edge.pids.items()}
                ticks0 = {n: proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
                try:
                    s, sampler = esp_sim_sampled(bins, edge.mqtt_port, devices, rate, args.groups_duration, tag, edge.pids)
                except RuntimeError as e:
                    log(f"    run {k + 1}: esp-sim failed: {e}")
                    rec["runs"].append({"error": str(e)[-1500:]})
                    break
                io_send = {n: proc_io(pid) for n, pid in edge.pids.items()}
                state_send = dir_size(state_dir)
                # The run's last windows end at the next minute and close 5 s after (late-arrival tolerance),
                # with the wall clock as the watermark once the input is silent.
                deadline = s["_t1"] + 60 + 5 + args.groups_wait
                acked = s["acked"]
                got, nrows = patient_rows(edge, tag + "-")
                while got < acked and time.time() < deadline:
                    time.sleep(1.0)
                    got, nrows = patient_rows(edge, tag + "-")
                time.sleep(1.0)
                got, nrows = patient_rows(edge, tag + "-")
                done_s = time.time() - s["_t1"]
                io1 = {n: proc_io(pid) for n, pid in edge.pids.items()}
                ticks1 = {n: proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
                state_end = dir_size(state_dir)
                achieved = s["achieved_rate"]
                per_msg = got or acked or 1
                run = {
                    "target_rate": rate, "achieved_rate": round(achieved, 1), "published": s["published"],
                    "acked": acked, "unacked": s["unacked"], "connects": s.get("connects"),
                    "disconnects": s.get("disconnects"), "counted_upstream": got, "rows_upstream": nrows,
                    "every_window_out": got == acked and s["unacked"] == 0,
                    "windows_out_after_s": round(done_s, 1),
                    "kept_rate": achieved >= 0.95 * rate,
                    "cpu_pct": {n: sampler.cpu_pct(n) for n in edge.pids},
                    "cpu_pct_per_1000_msgs": {
                        n: None if sampler.cpu_pct(n) is None or not achieved else
                        round(sampler.cpu_pct(n) / (achieved / 1000.0), 2) for n in edge.pids},
                    "cpu_s_whole_run": {
                        n: None if ticks0[n] is None or ticks1[n] is None else
                        round((ticks1[n] - ticks0[n]) / CLK_TCK, 2) for n in edge.pids},
                    "rss_max_kb": {n: sampler.rss_max_kb(n) for n in edge.pids},
                    "esp_sim_cpu_pct": None if s["_sim_cpu_s"] is None else round(100.0 * s["_sim_cpu_s"] / sampler.wall, 1),
                    "esp_sim_rss_max_kb": s["_sim_rss_max_kb"],
                    "io_sending": {n: io_delta(io0[n], io_send[n]) for n in edge.pids},
                    "io": {n: io_delta(io0[n], io1[n]) for n in edge.pids},
                    "write_bytes_per_msg": {
                        n: None if io_delta(io0[n], io1[n]) is None else
                        round(io_delta(io0[n], io1[n])["write_bytes"] / per_msg, 1) for n in edge.pids},
                    "wchar_per_msg": {
                        n: None if io_delta(io0[n], io1[n]) is None else
                        round(io_delta(io0[n], io1[n])["wchar"] / per_msg, 1) for n in edge.pids},
                    "state_dir_at_end_of_sending": state_send, "state_dir_after_windows": state_end,
                    "window_s": round(sampler.wall, 2),
                }
                rec["runs"].append(run)
                a = run["io"]["AggregatorModule"] or {}
                h = run["io"]["edge-dev hub"] or {}
                log(f"    run {k + 1}: achieved {achieved:,.1f}/s, acked {acked}, counted upstream {got} in {nrows} rows "
                    f"({'every window out' if run['every_window_out'] else 'MISSING ' + str(acked - got)}, "
                    f"{done_s:.0f} s after sending); AggregatorModule CPU {run['cpu_pct']['AggregatorModule'] or 0:.1f} % "
                    f"RSS {(run['rss_max_kb']['AggregatorModule'] or 0) / 1024:.1f} MB, write_bytes "
                    f"{a.get('write_bytes', 0) / per_msg:.0f} B/msg, wchar {a.get('wchar', 0) / per_msg:.0f} B/msg, "
                    f"state {state_send and state_send['bytes']} B -> {state_end and state_end['bytes']} B; hub write_bytes "
                    f"{h.get('write_bytes', 0) / per_msg:.0f} B/msg; esp-sim CPU {run['esp_sim_cpu_pct']} %, "
                    f"connects {run['connects']}")
        except RuntimeError as e:
            log(f"    {devices} devices: {e}")
            rec["error"] = str(e)[-1500:]
        finally:
            edge.stop()
        ok = [r for r in rec["runs"] if "error" not in r]
        if ok:
            rec["summary"] = {
                "runs": len(ok), "every_window_out_runs": sum(1 for r in ok if r["every_window_out"]),
                "kept_rate_runs": sum(1 for r in ok if r["kept_rate"]),
                "achieved_rate": spread([r["achieved_rate"] for r in ok]),
                "cpu_pct_per_1000_msgs": {n: spread([r["cpu_pct_per_1000_msgs"].get(n) for r in ok]) for n in names},
                "rss_max_kb": {n: spread([r["rss_max_kb"].get(n) for r in ok]) for n in names},
                "write_bytes_per_msg": {n: spread([r["write_bytes_per_msg"].get(n) for r in ok]) for n in names},
                "wchar_per_msg": {n: spread([r["wchar_per_msg"].get(n) for r in ok]) for n in names},
                "state_dir_bytes_at_end_of_sending": spread([(r["state_dir_at_end_of_sending"] or {}).get("bytes") for r in ok]),
                "state_dir_bytes_after_windows": spread([(r["state_dir_after_windows"] or {}).get("bytes") for r in ok]),
                "esp_sim_cpu_pct": spread([r["esp_sim_cpu_pct"] for r in ok]),
            }
    return out


# ---------------------------------------------------------------- 2. MQTT ingest

def start_ours(bins, work, port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_") and not k.startswith("IOTEDGE_")}
    env.update({"MQTT_PORT": str(port), "MQTT_BIND_ADDRESS": "127.0.0.1", "MQTT_METRICS_PORT": "0",
                "RUST_LOG": "warn"})
    p = subprocess.Popen([str(bins / "mqtt-server"), "--sink", "stdout"], stdout=subprocess.DEVNULL,
                         stderr=open(work / "mqtt-server.log", "wb"), env=env)
    wait_port(port, 30, p)
    return p, []


def start_mosquitto(work, port):
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\n"
                    "log_dest none\n")
    p = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=open(work / "mosquitto.log", "wb"))
    wait_port(port, 30, p)
    # One QoS 1 subscriber that takes every message: Mosquitto's equivalent of our server's forwarder.
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "#", "-q", "1",
                            "-i", "bench-forwarder"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p, [sub]


def bench_ingest(bins, work, args):
    log("== 2. MQTT ingest: MqttServerModule (--sink stdout) vs Mosquitto (one QoS 1 subscriber)")
    d = work / "ingest"
    d.mkdir(parents=True, exist_ok=True)
    servers = {}
    for name in ("MqttServerModule", "mosquitto"):
        port = free_port()
        proc, extra = start_ours(bins, d, port) if name == "MqttServerModule" else start_mosquitto(d, port)
        servers[name] = {"proc": proc, "extra": extra, "port": port, "fixed": [], "sat": []}
    try:
        time.sleep(1)
        for name, s in servers.items():
            idle = Sampler({"server": s["proc"].pid}).start()
            time.sleep(2)
            idle.stop()
            s["idle_rss_kb"] = idle.rss_max_kb("server")
        for k in range(args.runs):
            for name, s in servers.items():  # interleaved, so a busy moment of the machine hits both
                pids = {"server": s["proc"].pid}
                if s["extra"]:
                    pids["subscriber"] = s["extra"][0].pid
                for kind, rate, dur in (("fixed", args.ingest_rate, args.ingest_duration),
                                        ("sat", args.saturation_rate, args.ingest_duration)):
                    sm, sampler = esp_sim_sampled(bins, s["port"], args.ingest_devices, rate, dur,
                                                  f"in{k}{kind}-", pids)
                    rec = {"target_rate": rate, "achieved_rate": round(sm["achieved_rate"], 1),
                           "acked_per_s": round(sm["acked"] / sm["elapsed_s"], 1), "acked": sm["acked"],
                           "unacked": sm["unacked"], "ack_latency_us": sm.get("latency_us"),
                           "server_cpu_pct": sampler.cpu_pct("server"),
                           "subscriber_cpu_pct": sampler.cpu_pct("subscriber") if "subscriber" in pids else None,
                           "server_rss_max_kb": sampler.rss_max_kb("server"),
                           "esp_sim_cpu_pct": None if sm["_sim_cpu_s"] is None else 100.0 * sm["_sim_cpu_s"] / sampler.wall}
                    s[kind].append(rec)
                    log(f"  {name:16} {kind:5} target {rate:>6}/s achieved {rec['achieved_rate']:>9}/s "
                        f"server CPU {rec['server_cpu_pct']:.0f}% RSS {rec['server_rss_max_kb']} kB")
    finally:
        for s in servers.values():
            for e in s["extra"]:
                stop(e)
            stop(s["proc"])
    out = {"devices": args.ingest_devices, "qos": 1, "duration_s": args.ingest_duration,
           "payload": "esp-sim load mode JSON, ~100 bytes", "fixed_rate": args.ingest_rate,
           "saturation_target": args.saturation_rate, "servers": {}}
    for name, s in servers.items():
        fixed, sat = s["fixed"], s["sat"]
        out["servers"][name] = {
            "idle_rss_kb": s["idle_rss_kb"],
            "saturation_msgs_per_s": spread([r["achieved_rate"] for r in sat]),
            "saturation_server_cpu_pct": spread([r["server_cpu_pct"] for r in sat]),
            "saturation_rss_max_kb": spread([r["server_rss_max_kb"] for r in sat]),
            "fixed_server_cpu_pct": spread([r["server_cpu_pct"] for r in fixed]),
            "fixed_cpu_pct_per_1000_msgs": spread([
                None if r["server_cpu_pct"] is None else round(r["server_cpu_pct"] / (r["achieved_rate"] / 1000.0), 2)
                for r in fixed]),
            "fixed_ack_p50_us": spread([(r["ack_latency_us"] or {}).get("p50") for r in fixed]),
            "fixed_ack_p99_us": spread([(r["ack_latency_us"] or {}).get("p99") for r in fixed]),
            "fixed_rss_max_kb": spread([r["server_rss_max_kb"] for r in fixed]),
            "fixed_runs": fixed, "saturation_runs": sat,
        }
    a = out["servers"]["MqttServerModule"]["saturation_msgs_per_s"]["median"]
    b = out["servers"]["mosquitto"]["saturation_msgs_per_s"]["median"]
    out["ratio_msgs_per_s_ours_over_mosquitto"] = round(a / b, 3) if a and b else None
    a = out["servers"]["MqttServerModule"]["fixed_server_cpu_pct"]["median"]
    b = out["servers"]["mosquitto"]["fixed_server_cpu_pct"]["median"]
    out["ratio_cpu_at_fixed_rate_ours_over_mosquitto"] = round(a / b, 3) if a and b else None
    return out


# ---------------------------------------------------------------- 3. aggregation

def generate_events(path, n, devices=200):
    """n events of `devices` devices (device i % devices), 1,000 events per second of event time, none exactly
    on a 10 s (so none on a 60 s) window edge: ASA windows are (start, end], bytewax's and DuckDB's
    time_bucket's [start, end), and the edge is the one place they differ. Each device's events are `devices`
    ms apart, and its temperatures vary. (The file of the 2026-11-24 runs had the same events and times, but
    moved events only off 60 s edges, and gave each device one constant temperature.)"""
    start = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)
    start_ms = int(start.timestamp() * 1000)
    width = max(3, len(str(devices - 1)))
    names = ["dev-%0*d" % (width, k) for k in range(devices)]
    sec, prefix = None, ""
    with open(path, "w") as f:
        for i in range(n):
            ms = start_ms + i + 1
            if ms % 10000 == 0:
                ms += 1  # off the edge; the next event has the same millisecond, still in order
            if ms // 1000 != sec:
                sec = ms // 1000
                prefix = dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
            temp = 36.0 + ((i * 7919 + (i // devices) * 7) % 50) / 10.0  # 36.0-40.9, varying per device
            f.write('{"deviceId":"%s","temp":%.1f,"timeCreated":"%s%03dZ"}\n'
                    % (names[i % devices], temp, prefix, ms % 1000))


def vm_hwm_kb(pid):
    """Peak RSS of a running process (VmHWM: reset by exec, unlike getrusage's ru_maxrss, which keeps the
    forking Python's size)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def timed_run(cmd, stdout_path, env=None):
    t0 = time.monotonic()
    with open(stdout_path, "wb") as out, tempfile.TemporaryFile() as err_f:
        p = subprocess.Popen(cmd, stdout=out, stderr=err_f, env=env)
        peak = [None]
        done = threading.Event()

        def watch():
            while not done.is_set():
                v = vm_hwm_kb(p.pid)
                if v is not None:
                    peak[0] = v
                done.wait(0.01)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        _, status, ru = os.wait4(p.pid, 0)  # a zombie until here: its /proc entry stays readable
        done.set()
        w.join(timeout=5)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        err_f.seek(0)
        err = err_f.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}: {err[-2000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_kb": peak[0], "stderr": err[-4000:]}


AGG_STATS = ("SELECT deviceId, Avg(temp) AS avg, Max(temp) AS max, Count(*) AS n, System.Timestamp() AS windowEnd "
             "INTO Out FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, ")
# The aggregation workloads: the query `aggregator replay` runs, and the devices in the events file. B and C
# select System.Timestamp() AS windowEnd so that their rows can be matched with the peers' (a row of ours
# carries no window end unless the query selects it); A is the seed's statement verbatim, its rows (one per
# window, in window order) are matched by order.
AGG_WORKLOADS = {
    "A": {"query": SEED_QUERY, "devices": 200,
          "what": "seed query: 60 s tumbling avg of all devices"},
    "B": {"query": AGG_STATS + "TumblingWindow(second,60)", "devices": 1000,
          "what": "per device avg, max, count, 60 s tumbling"},
    "C": {"query": AGG_STATS + "HoppingWindow(second,60,10)", "devices": 10000,
          "what": "per device avg, max, count, 60 s hopping by 10 s"},
}
AGG_PEER_HOW = {
    "bytewax": "bytewax 1 worker (bench/bytewax_avg.py): FileSource -> json.loads -> EventClock(timeCreated, event time "
               "only) -> TumblingWindower(60 s) (A, B) or SlidingWindower(60 s, offset 10 s) (C), keyed by deviceId in "
               "B and C -> fold_window(sum, count[, max])",
    "duckdb": "DuckDB 1 thread (bench/duckdb_agg.py): read_json of the whole file, time_bucket GROUP BY; the query's own "
              "time (without Python's start and the output) is printed on stderr",
}


def _window_end_key(cache, s):
    """A window end as whole epoch seconds, whatever the writer's format (`...T00:01:00Z`, `...:00.0000000Z`)."""
    k = cache.get(s)
    if k is None:
        k = cache[s] = round(parse_time(s).timestamp())
    return k


def read_agg_rows(path, ours):
    """The rows of one output file as a list of dicts {windowEnd (epoch s or None), deviceId, avg, max, n}."""
    cache, rows = {}, []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if ours:
                r = r["row"]
            r = {k.lower() if k.lower() in ("avg", "max", "n") else k: v for k, v in r.items()}
            end = r.get("windowEnd")
            rows.append({"windowEnd": _window_end_key(cache, end) if end is not None else None,
                         "deviceId": r.get("deviceId"), "avg": r.get("avg"), "max": r.get("max"), "n": r.get("n")})
    return rows


def compare_agg(workload, outputs):
    """Whether the outputs (name -> rows) are the same: the same (windowEnd, deviceId) rows, avg within 1e-9,
    max and n equal. Our A rows carry no window end: they are matched by order with the peers' rows in window
    order. Returns (identical, details)."""
    names = list(outputs)
    keyed = {}
    for name in names:
        rows = outputs[name]
        if workload == "A" and rows and rows[0]["windowEnd"] is None:
            ref = next((outputs[m] for m in names if outputs[m] and outputs[m][0]["windowEnd"] is not None), None)
            if ref is None or len(ref) != len(rows):
                keyed[name] = {("row", i): r for i, r in enumerate(rows)}
                continue
            ends = sorted(r["windowEnd"] for r in ref)
            rows = [dict(r, windowEnd=e) for r, e in zip(rows, ends)]
        keyed[name] = {(r["windowEnd"], r["deviceId"]): r for r in rows}
    base_name = names[0]
    base = keyed[base_name]
    details = {"rows": {n: len(outputs[n]) for n in names}}
    identical = True
    for name in names[1:]:
        other = keyed[name]
        missing, extra = len(base.keys() - other.keys()), len(other.keys() - base.keys())
        avg_diff, max_diff, n_diff, worst = 0, 0, 0, 0.0
        for k in base.keys() & other.keys():
            a, b = base[k], other[k]
            if a["avg"] is None or b["avg"] is None:
                avg_diff += a["avg"] != b["avg"]
            else:
                d = abs(a["avg"] - b["avg"])
                worst = max(worst, d)
                avg_diff += d > 1e-9
            if workload != "A":
                max_diff += a["max"] != b["max"]
                n_diff += a["n"] != b["n"]
        same = not (missing or extra or avg_diff or max_diff or n_diff)
        identical = identical and same
        details[f"{base_name}_vs_{name}"] = {"same": same, "rows_only_in_" + base_name: missing,
                                             "rows_only_in_" + name: extra, "avg_differs": avg_diff,
                                             "max_differs": max_diff, "n_differs": n_diff,
                                             "largest_avg_difference": worst}
    return identical, details


def bench_aggregation(bins, work, args):
    peers = [p for p in args.agg_peers.split(",") if p]
    workloads = [w for w in args.workloads.split(",") if w]
    log(f"== 3. aggregation: stream-query (aggregator replay) vs {', '.join(peers)}, {args.events:,} events, "
        f"workloads {', '.join(workloads)}")
    d = work / "aggregation"
    d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["RUST_LOG"] = "warn"
    out = {"events": args.events, "runs": args.runs, "workloads": {},
           "how": "events/s = the file's events over the wall time of the whole process (start, JSON parsing, "
                  "windows, output) over the same file; CPU s = user + system of the process (wait4); peak RSS "
                  "= VmHWM; `aggregator replay --query Q --input FILE` runs the stream-query engine on one core",
           "peers": {p: AGG_PEER_HOW[p] for p in peers}}
    for w in workloads:
        spec = AGG_WORKLOADS[w]
        events = d / f"events-{spec['devices']}.jsonl"
        if not events.exists():
            generate_events(events, args.events, spec["devices"])
        log(f"  workload {w} ({spec['what']}, {spec['devices']:,} devices): {spec['query']}")
        cmds = {"stream_query": [str(bins / "aggregator"), "replay", "--query", spec["query"], "--input", str(events)],
                "bytewax": [args.python, str(REPO / "bench" / "bytewax_avg.py"), str(events), w],
                "duckdb": [args.python, str(REPO / "bench" / "duckdb_agg.py"), str(events), w]}
        tools = ["stream_query"] + peers
        runs = {t: [] for t in tools}
        for k in range(args.runs):
            for t in tools:  # interleaved, so a busy moment of the machine hits every tool
                r = timed_run(cmds[t], d / f"{w}-{t}.jsonl", env if t == "stream_query" else None)
                if t == "duckdb":
                    q = [line for line in r["stderr"].splitlines() if line.startswith("duckdb query:")]
                    r["query_s"] = float(q[-1].split()[2]) if q else None
                r.pop("stderr", None)
                runs[t].append(r)
                extra = f" (query alone {r['query_s']:.2f} s)" if r.get("query_s") is not None else ""
                log(f"    {t:12} run {k + 1}: {r['wall_s']:6.2f} s, {args.events / r['wall_s']:>10,.0f} events/s, "
                    f"CPU {r['cpu_s']:.2f} s, peak RSS {r['max_rss_kb'] / 1024 if r['max_rss_kb'] else 0:.1f} MB{extra}")
        rows = {t: read_agg_rows(d / f"{w}-{t}.jsonl", t == "stream_query") for t in tools}
        same, details = compare_agg(w, rows)
        log(f"    outputs of {', '.join(tools)}: {'identical' if same else 'DIFFERENT'} "
            f"({', '.join(f'{t} {len(r):,} rows' for t, r in rows.items())})")
        if not same:
            log(f"    WARNING: the outputs differ: {json.dumps(details)}")
        res = {"query": spec["query"], "devices": spec["devices"], "what": spec["what"], "rows": len(rows["stream_query"]),
               "outputs_identical": same, "comparison": details}
        for t in tools:
            rs = runs[t]
            res[t] = {"events_per_s": spread([round(args.events / r["wall_s"]) for r in rs]),
                      "cpu_s": spread([round(r["cpu_s"], 3) for r in rs]),
                      "max_rss_kb": spread([r["max_rss_kb"] for r in rs]),
                      "wall_s": spread([round(r["wall_s"], 3) for r in rs])}
            if t == "duckdb":
                res[t]["query_s"] = spread([r["query_s"] for r in rs])
                res[t]["events_per_s_query_alone"] = spread(
                    [round(args.events / r["query_s"]) if r["query_s"] else None for r in rs])
            if t != "stream_query":
                a, b = res["stream_query"]["events_per_s"]["median"], res[t]["events_per_s"]["median"]
                res[f"ratio_events_per_s_ours_over_{t}"] = round(a / b, 2) if a and b else None
        out["workloads"][w] = res
    return out


# ---------------------------------------------------------------- 4. sizes, machine

def images():
    if shutil.which("docker") is None:
        return "not built (no docker on this machine)"
    try:
        out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}\t{{.Size}}"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not built (docker images failed: {e})"
    if out.returncode != 0:
        return f"not built (docker images failed: {out.stderr.strip()[:200]})"
    found = {}
    for line in out.stdout.splitlines():
        name, _, size = line.partition("\t")
        repo = name.rsplit(":", 1)[0].rsplit("/", 1)[-1].lower()
        for m in ("mqtt-server", "aggregator", "esp-sim"):
            if m in repo:
                found[name] = size
    return found or "not built"


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass

    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    mosq = None
    try:
        r = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, timeout=10)
        mosq = (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "mem_total_mb": mem_kb // 1024 if mem_kb else None,
            "kernel": platform.release(), "rustc": version(["rustc", "--version"]), "mosquitto": mosq,
            "python": platform.python_version()}


def loadavg():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def busy_processes():
    """Other heavy processes at the start (e.g. parallel builds): the figures are only as quiet as the machine."""
    out = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[1:8]:
        parts = line.split(None, 1)
        if len(parts) == 2 and float(parts[0]) >= 20.0:
            rows.append(f"{parts[1]} {parts[0]}%")
    return rows


# ---------------------------------------------------------------- table

def fmt(v, unit="", digits=0):
    if v is None:
        return "-"
    if isinstance(v, float) or isinstance(v, int):
        return f"{v:,.{digits}f}{unit}"
    return str(v)


def sp(s, unit="", digits=0, scale=1.0):
    if not s or s.get("median") is None:
        return "-"
    return (f"{fmt(s['median'] * scale, unit, digits)} "
            f"({fmt(s['min'] * scale, '', digits)}-{fmt(s['max'] * scale, '', digits)})")


PEER_NAMES = {"bytewax": "bytewax", "duckdb": "DuckDB"}


def aggregation_rows(agg):
    """Section 3's table rows: per workload, ours against each peer (events/s, CPU, peak RSS), DuckDB's query
    time alone, and whether the outputs were the same."""
    rows = []
    first = True
    for w, r in agg["workloads"].items():
        peers = [p for p in ("bytewax", "duckdb") if p in r]
        ours = r["stream_query"]
        head = "3 aggregation" if first else ""
        first = False
        label = (f"{w} ({r['what']}, {r['devices']:,} devices)" if w != "A" else
                 f"A (seed query, 60 s tumbling avg, {r['devices']:,} devices)")
        for i, p in enumerate(peers):
            rows.append((head if i == 0 else "", (f"{label}: events/s, {agg['events']:,} events" if i == 0 else
                                                  f"{w}: events/s vs {PEER_NAMES[p]}"),
                         sp(ours["events_per_s"]), f"{PEER_NAMES[p]} {sp(r[p]['events_per_s'])}",
                         fmt(r.get(f"ratio_events_per_s_ours_over_{p}"), "x", 1)))
        if "duckdb" in r and r["duckdb"].get("events_per_s_query_alone"):
            q = r["duckdb"]
            rows.append(("", f"{w}: DuckDB's query alone (no Python start, no output): events/s / s", "",
                         f"DuckDB {sp(q['events_per_s_query_alone'])} / {sp(q['query_s'], ' s', 2)}", ""))
        rows.append(("", f"{w}: CPU s", sp(ours["cpu_s"], " s", 2),
                     " / ".join(f"{PEER_NAMES[p]} {sp(r[p]['cpu_s'], ' s', 2)}" for p in peers), ""))
        rows.append(("", f"{w}: peak RSS", sp(ours["max_rss_kb"], " MB", 1, 1 / 1024),
                     " / ".join(f"{PEER_NAMES[p]} {sp(r[p]['max_rss_kb'], ' MB', 1, 1 / 1024)}" for p in peers), ""))
        rows.append(("", f"{w}: same output rows ({r['rows']:,} rows; avg within 1e-9, max and n equal)",
                     "yes" if r["outputs_identical"] else "NO", ", ".join(PEER_NAMES[p] for p in peers), ""))
    return rows


def groups_rows(grp):
    """Section 5's table rows: per number of devices, whether every window came out, AggregatorModule's CPU,
    RSS, bytes written per message and state folder, and the hub's bytes written per message."""
    rows = []
    head = "5 patient groups"
    for devices, rec in grp["by_devices"].items():
        sm = rec.get("summary")
        label = f"{int(devices):,} devices at {grp['rate']:,} msg/s"
        if not sm:
            rows.append((head, f"{label}: not measured", (rec.get("error") or
                         next((r["error"] for r in rec.get("runs", []) if "error" in r), "no run"))[:120], ""))
            head = ""
            continue
        a = "AggregatorModule"
        rows.append((head, f"{label}: achieved, runs with every window out (sum of n = acked)",
                     f"{sp(sm['achieved_rate'], ' msg/s', 1)}, {sm['every_window_out_runs']}/{sm['runs']} runs"
                     + ("" if sm["kept_rate_runs"] == sm["runs"] else f" ({sm['runs'] - sm['kept_rate_runs']} under 95 % of the rate)"),
                     ""))
        head = ""
        rows.append(("", f"{label}: {a} CPU per 1,000 msg/s", sp(sm["cpu_pct_per_1000_msgs"][a], " % of a core", 1), ""))
        idle = (rec.get("idle_rss_kb") or {}).get(a)
        rows.append(("", f"{label}: {a} RSS idle / max", f"{fmt(idle / 1024 if idle else None, ' MB', 1)} / "
                     f"{sp(sm['rss_max_kb'][a], ' MB', 1, 1 / 1024)}", ""))
        rows.append(("", f"{label}: {a} bytes written per message: storage (write_bytes) / all write calls (wchar)",
                     f"{sp(sm['write_bytes_per_msg'][a], ' B', 0)} / {sp(sm['wchar_per_msg'][a], ' B', 0)}", ""))
        rows.append(("", f"{label}: {a} state folder at end of sending / after the last window",
                     f"{sp(sm['state_dir_bytes_at_end_of_sending'], ' kB', 0, 1 / 1024)} / "
                     f"{sp(sm['state_dir_bytes_after_windows'], ' kB', 0, 1 / 1024)}", ""))
        rows.append(("", f"{label}: edge-dev hub bytes written per message: storage / all write calls",
                     f"{sp(sm['write_bytes_per_msg']['edge-dev hub'], ' B', 0)} / "
                     f"{sp(sm['wchar_per_msg']['edge-dev hub'], ' B', 0)}", ""))
        rows.append(("", f"{label}: CPU per 1,000 msg/s of MqttServerModule / hub",
                     f"{sp(sm['cpu_pct_per_1000_msgs']['MqttServerModule'], ' %', 1)} / "
                     f"{sp(sm['cpu_pct_per_1000_msgs']['edge-dev hub'], ' %', 1)}", ""))
        rows.append(("", f"{label}: esp-sim (load generator) CPU", sp(sm["esp_sim_cpu_pct"], " % of a core", 0), ""))
    return rows


def table(res):
    rows = []
    e2e, lats, ing, agg = res.get("e2e") or {}, res.get("latency") or {}, res.get("mqtt_ingest"), res.get("aggregation")
    labels = {"shipped": "as shipped", "tick10": "AGGREGATOR_TICK_MS=10"}
    for name in sorted(set(e2e) | set(lats), key=lambda n: list(labels).index(n) if n in labels else 9):
        e, lat, label = e2e.get(name), lats.get(name), labels.get(name, name)
        first = not rows
        if e:
            am = e.get("at_max")
            rows.append(("1 end to end" if first else "", f"{label}: max sustained rate, zero loss, QoS 1",
                         (f"{fmt(e['max_sustained_rate'], ' msg/s')}: achieved {sp(am['achieved_rate'], ' msg/s', 1)}, "
                          f"{am['runs_zero_loss']}/{am['runs']} runs lossless") if am else "none of the ladder", ""))
            rows.append(("", f"{label}: first rate it did not keep up with",
                         fmt(e.get("first_failing_rate"), " msg/s") if e.get("first_failing_rate") else "none in the ladder", ""))
            cu = e.get("carried_under_overload") or carried_under_overload(e.get("ladder", []))
            if cu:
                rows.append(("", f"{label}: carried while overloaded (runs that did not keep up)", sp(cu, " msg/s", 1), ""))
            if am:
                rows.append(("", f"{label}: device ack p50 / p99 at that rate",
                             f"{sp(am['ack_p50_us'], ' ms', 1, 0.001)} / {sp(am['ack_p99_us'], ' ms', 1, 0.001)}", ""))
        if lat:
            rows.append(("1 end to end" if not rows else "", f"{label}: device->upstream latency at {lat['rate']} msg/s p50 / p99",
                         f"{sp(lat['p50_ms'], ' ms')} / {sp(lat['p99_ms'], ' ms')}", ""))
    if ing:
        o, m = ing["servers"]["MqttServerModule"], ing["servers"]["mosquitto"]
        rows.append(("2 MQTT ingest", f"msgs/s at saturation ({ing['devices']} devices, QoS 1)",
                     sp(o["saturation_msgs_per_s"]), sp(m["saturation_msgs_per_s"]),
                     fmt(ing["ratio_msgs_per_s_ours_over_mosquitto"], "x", 2)))
        rows.append(("", "server CPU at saturation", sp(o["saturation_server_cpu_pct"], " %"),
                     sp(m["saturation_server_cpu_pct"], " %"), ""))
        rows.append(("", f"server CPU at {ing['fixed_rate']} msg/s", sp(o["fixed_server_cpu_pct"], " %"),
                     sp(m["fixed_server_cpu_pct"], " %"), fmt(ing["ratio_cpu_at_fixed_rate_ours_over_mosquitto"], "x", 2)))
        rows.append(("", "server CPU per 1,000 msg/s", sp(o["fixed_cpu_pct_per_1000_msgs"], " % of a core", 1),
                     sp(m["fixed_cpu_pct_per_1000_msgs"], " % of a core", 1), ""))
        rows.append(("", f"ack p50 / p99 at {ing['fixed_rate']} msg/s",
                     f"{sp(o['fixed_ack_p50_us'], ' us')} / {sp(o['fixed_ack_p99_us'], ' us')}",
                     f"{sp(m['fixed_ack_p50_us'], ' us')} / {sp(m['fixed_ack_p99_us'], ' us')}", ""))
        rows.append(("", "RSS idle / at saturation", f"{fmt(o['idle_rss_kb'] / 1024, ' MB', 1)} / {sp(o['saturation_rss_max_kb'], ' MB', 1, 1 / 1024)}",
                     f"{fmt(m['idle_rss_kb'] / 1024, ' MB', 1)} / {sp(m['saturation_rss_max_kb'], ' MB', 1, 1 / 1024)}", ""))
    if agg and "workloads" in agg:
        rows.extend(aggregation_rows(agg))
    elif agg:  # a result file of the 2026-11-24 runs: the seed query against bytewax
        rows.append(("3 aggregation", f"events/s, 60 s tumbling avg, {agg['events']:,} events",
                     sp(agg["stream_query"]["events_per_s"]), sp(agg["bytewax"]["events_per_s"]),
                     fmt(agg["ratio_events_per_s_ours_over_bytewax"], "x", 1)))
        rows.append(("", "peak RSS", sp(agg["stream_query"]["max_rss_kb"], " MB", 1, 1 / 1024),
                     sp(agg["bytewax"]["max_rss_kb"], " MB", 1, 1 / 1024), ""))
        rows.append(("", "same output rows", "yes" if agg["outputs_identical"] else "NO", "", ""))
    e = e2e.get("tick10") or e2e.get("shipped")
    if e:
        f = e.get("fixed_rate")
        am = e.get("at_max")
        for n in ("MqttServerModule", "edge-dev hub", "AggregatorModule"):
            rss = [fmt(e["idle_rss_kb"][n] / 1024, " MB", 1)]
            what = ["idle"]
            if f:
                rss.append(sp(f["rss_max_kb"][n], " MB", 1, 1 / 1024))
                what.append(f"max at {f['rate']} msg/s")
            if am and not (f and f["rate"] == e["max_sustained_rate"]):
                rss.append(sp(am["rss_max_kb"][n], " MB", 1, 1 / 1024))
                what.append(f"{e['max_sustained_rate']} msg/s")
            rows.append(("4 footprint" if n == "MqttServerModule" else "", f"{n} RSS {' / '.join(what)} ({labels.get(e['config'])})",
                         " / ".join(rss), ""))
            if f:
                rows.append(("", f"{n} CPU per 1,000 msg/s (at {f['rate']} msg/s)", sp(f["cpu_pct_per_1000_msgs"][n], " % of a core", 1), ""))
        if f:
            rows.append(("", f"esp-sim (load generator) CPU per 1,000 msg/s (at {f['rate']} msg/s)", sp(f["esp_sim_cpu_pct_per_1000_msgs"], " % of a core", 1), ""))
    rows.append(("" if e else "4 footprint", "binaries (release, not stripped)",
                 ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in res["binaries_bytes"].items()), ""))
    img = res["images"]
    if isinstance(img, str):
        rows.append(("", "images", img, ""))
    else:
        for k, v in sorted(img.items()):
            rows.append(("", f"image {k}", v, ""))

    if res.get("groups"):
        rows.extend(groups_rows(res["groups"]))
    header = ("section", "figure", "ours (median (min-max))", "peer", "ratio")
    rows = [r + ("",) * (5 - len(r)) for r in rows]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    lines = ["| " + " | ".join(str(h).ljust(widths[i]) for i, h in enumerate(header)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    ap.add_argument("--python", default=sys.executable, help="the Python that has bytewax and duckdb")
    ap.add_argument("--out", default=None, help="result file (default bench/results/<UTC date and time>.json)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short runs, to try the script (figures not for publishing)")
    ap.add_argument("--only", default="e2e,latency,ingest,aggregation,groups",
                    help="comma-separated sections: e2e, latency, ingest, aggregation, groups")
    ap.add_argument("--configs", default="shipped",
                    help="end-to-end configurations: shipped (the deployment as it is), tick10 (AGGREGATOR_TICK_MS=10)")
    ap.add_argument("--shipped-rates", default="500,1000,2000,4000,8000")
    ap.add_argument("--tick10-rates", default="500,1000,2000,4000,8000")
    ap.add_argument("--e2e-devices", type=int, default=200, help="most devices in an end-to-end run (rate/5 below)")
    ap.add_argument("--e2e-duration", type=int, default=20)
    ap.add_argument("--footprint-rate", type=int, default=0,
                    help="fixed rate of extra footprint runs (tick10); 0: use the runs at the highest sustained rate")
    ap.add_argument("--shipped-latency-rate", type=int, default=200)
    ap.add_argument("--tick10-latency-rate", type=int, default=200)
    ap.add_argument("--latency-duration", type=int, default=8)
    ap.add_argument("--ingest-devices", type=int, default=100)
    ap.add_argument("--ingest-rate", type=int, default=5000)
    ap.add_argument("--saturation-rate", type=int, default=100000)
    ap.add_argument("--ingest-duration", type=int, default=8)
    ap.add_argument("--events", type=int, default=1_000_000, help="events in each aggregation file")
    ap.add_argument("--workloads", default="A,B,C", help="aggregation workloads (A: the seed query, 200 devices; "
                    "B: per device avg/max/count, 60 s tumbling, 1,000 devices; C: the same, 60 s hopping by 10 s, "
                    "10,000 devices)")
    ap.add_argument("--agg-peers", default="bytewax,duckdb", help="aggregation peers: bytewax, duckdb")
    ap.add_argument("--groups-devices", default="1000,10000", help="devices of the patient-groups runs, in turn")
    ap.add_argument("--groups-rate", type=int, default=5000, help="total msg/s of the patient-groups runs")
    ap.add_argument("--groups-duration", type=int, default=60, help="seconds of sending per patient-groups run")
    ap.add_argument("--groups-wait", type=int, default=60,
                    help="seconds past the last window's close (its end + 5 s) to wait for it upstream")
    ap.add_argument("--table-from", default=None, help="print the table of an earlier result file and stop")
    args = ap.parse_args()
    if args.table_from:
        print(table(json.loads(pathlib.Path(args.table_from).read_text())))
        return
    configs = {
        "shipped": {"env": {}, "rates": [int(x) for x in args.shipped_rates.split(",")], "footprint": args.footprint_rate,
                    "latency_rate": args.shipped_latency_rate},
        "tick10": {"env": {"AGGREGATOR_TICK_MS": 10}, "rates": [int(x) for x in args.tick10_rates.split(",")],
                   "footprint": args.footprint_rate, "latency_rate": args.tick10_latency_rate},
    }
    configs = {k: v for k, v in configs.items() if k in args.configs.split(",")}
    if args.quick:
        args.runs, args.e2e_duration, args.latency_duration, args.ingest_duration = 1, 4, 4, 3
        args.events = 100_000
        args.groups_duration = 15
        for c in configs.values():
            c["rates"] = c["rates"][:3]
    only = set(args.only.split(","))
    unknown = only - {"e2e", "latency", "ingest", "aggregation", "groups"}
    if unknown:
        sys.exit(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    # Each simulated device is a socket in esp-sim and in MqttServerModule, which inherits our limit.
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    bins = pathlib.Path(args.bin_dir)
    for b in ("edge-dev", "mqtt-server", "aggregator", "esp-sim"):
        if not (bins / b).exists():
            sys.exit(f"{bins / b} is missing: build with `cargo build --release -p edge-dev -p mqtt-server "
                     f"-p aggregator -p esp-sim` (scripts/bench.sh does)")
    started = dt.datetime.now(dt.timezone.utc)
    res = {"started": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "machine": machine(), "loadavg_start": loadavg(), "busy_at_start": busy_processes()}
    try:
        res["machine"]["bytewax"] = subprocess.run(
            [args.python, "-c", "import importlib.metadata as m; print(m.version('bytewax'))"],
            capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        res["machine"]["bytewax"] = None
    try:
        res["machine"]["duckdb"] = subprocess.run(
            [args.python, "-c", "import importlib.metadata as m; print(m.version('duckdb'))"],
            capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        res["machine"]["duckdb"] = None
    res["binaries_bytes"] = {b: (bins / b).stat().st_size for b in ("mqtt-server", "aggregator", "esp-sim", "edge-dev")}
    res["images"] = images()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = pathlib.Path(tmp)
        if "ingest" in only:
            res["mqtt_ingest"] = bench_ingest(bins, work, args)
        for name, c in configs.items():
            if "e2e" in only:
                res.setdefault("e2e", {})[name] = bench_e2e(bins, work, args, name, c["rates"], c["env"], c["footprint"])
            if "latency" in only:
                rate = c["latency_rate"]
                res.setdefault("latency", {})[name] = bench_latency(bins, work, args, name, c["env"], rate,
                                                                    e2e_devices(rate, args.e2e_devices))
        if "aggregation" in only:
            res["aggregation"] = bench_aggregation(bins, work, args)
        if "groups" in only:
            res["groups"] = bench_groups(bins, work, args)
    res["loadavg_end"] = loadavg()
    res["elapsed_s"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
    res["table"] = table(res)
    out = pathlib.Path(args.out) if args.out else REPO / "bench" / "results" / (started.strftime("%Y-%m-%dT%H%M%SZ") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(res["table"])
    print(f"\nmachine: {res['machine']['nproc']} x {res['machine']['cpu_model']}, {res['machine']['mem_total_mb']} MB; "
          f"load average at start {res['loadavg_start']}, at end {res['loadavg_end']}"
          + (f"; busy at start: {', '.join(res['busy_at_start'])}" if res["busy_at_start"] else ""))
    print(f"took {res['elapsed_s']} s; written to {out}")


if __name__ == "__main__":
    main()
