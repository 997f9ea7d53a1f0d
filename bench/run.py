"""The benchmark run behind scripts/bench.sh: the pipeline's throughput, latency and footprint, side by side
with the peers a user would pick instead (Mosquitto for MQTT ingest, bytewax for windowed aggregation), on
this machine, in one run. Writes bench/results/<date>.json and prints a table.

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
3. aggregation: `aggregator replay` (the stream-query engine) vs bytewax over the same generated events
   file, the seed's 60 s tumbling-window average; both outputs are compared.
4. footprint: RSS idle and under load, CPU per 1,000 msg/s, binary and image sizes.

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
    def __init__(self, bins, workdir, query, mqtt_port, aggregator_env=None):
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

def generate_events(path, n):
    """n events, 200 devices, 1,000 events per second of event time, none exactly on a window edge
    (ASA windows are (start, end], bytewax's [start, end): the edge is the one place they differ)."""
    start = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)
    start_ms = int(start.timestamp() * 1000)
    with open(path, "w") as f:
        for i in range(n):
            ms = start_ms + i + 1
            if ms % 60000 == 0:
                ms += 1  # off the edge; the next event has the same millisecond, still in order
            t = dt.datetime.fromtimestamp(ms / 1000.0, dt.timezone.utc)
            temp = 36.0 + ((i * 7919) % 50) / 10.0
            f.write('{"deviceId":"dev-%03d","temp":%.1f,"timeCreated":"%s"}\n'
                    % (i % 200, temp, t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ms % 1000)))


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
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_kb": peak[0]}


def bench_aggregation(bins, work, args):
    log(f"== 3. aggregation: stream-query (aggregator replay) vs bytewax, {args.events:,} events")
    d = work / "aggregation"
    d.mkdir(parents=True, exist_ok=True)
    events = d / "events.jsonl"
    generate_events(events, args.events)
    ours, peer = [], []
    env = dict(os.environ)
    env["RUST_LOG"] = "warn"
    for k in range(args.runs):
        r = timed_run([str(bins / "aggregator"), "replay", "--query", SEED_QUERY, "--input", str(events)],
                      d / "ours.jsonl", env)
        ours.append(r)
        log(f"  stream-query run {k + 1}: {r['wall_s']:.2f} s, {args.events / r['wall_s']:,.0f} events/s")
        r = timed_run([args.python, str(REPO / "bench" / "bytewax_avg.py"), str(events)], d / "bytewax.jsonl")
        peer.append(r)
        log(f"  bytewax      run {k + 1}: {r['wall_s']:.2f} s, {args.events / r['wall_s']:,.0f} events/s")
    a = [json.loads(line)["row"]["avg"] for line in open(d / "ours.jsonl") if line.strip()]
    b = [json.loads(line)["avg"] for line in open(d / "bytewax.jsonl") if line.strip()]
    same = len(a) == len(b) and all(abs(x - y) < 1e-9 for x, y in zip(a, b))
    if not same:
        log(f"  WARNING: the outputs differ: {len(a)} rows vs {len(b)} rows")
    eps_ours = spread([round(args.events / r["wall_s"]) for r in ours])
    eps_peer = spread([round(args.events / r["wall_s"]) for r in peer])
    return {
        "query": SEED_QUERY, "events": args.events, "windows": len(a), "outputs_identical": same,
        "stream_query": {"events_per_s": eps_ours, "cpu_s": spread([round(r["cpu_s"], 3) for r in ours]),
                         "max_rss_kb": spread([r["max_rss_kb"] for r in ours]),
                         "wall_s": spread([round(r["wall_s"], 3) for r in ours])},
        "bytewax": {"events_per_s": eps_peer, "cpu_s": spread([round(r["cpu_s"], 3) for r in peer]),
                    "max_rss_kb": spread([r["max_rss_kb"] for r in peer]),
                    "wall_s": spread([round(r["wall_s"], 3) for r in peer])},
        "ratio_events_per_s_ours_over_bytewax": round(eps_ours["median"] / eps_peer["median"], 2),
        "how": "wall time of the whole process (start, JSON parsing, windows, output) over the same file; "
               "bytewax 1 worker, FileSource -> json.loads -> EventClock(timeCreated) -> TumblingWindower(60 s) "
               "-> fold_window(sum, count)",
    }


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
    if agg:
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
    rows.append(("", "binaries (release, not stripped)",
                 ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in res["binaries_bytes"].items()), ""))
    img = res["images"]
    if isinstance(img, str):
        rows.append(("", "images", img, ""))
    else:
        for k, v in sorted(img.items()):
            rows.append(("", f"image {k}", v, ""))

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
    ap.add_argument("--python", default=sys.executable, help="the Python that has bytewax")
    ap.add_argument("--out", default=None, help="result file (default bench/results/<UTC date and time>.json)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short runs, to try the script (figures not for publishing)")
    ap.add_argument("--only", default="e2e,latency,ingest,aggregation", help="comma-separated sections")
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
    ap.add_argument("--events", type=int, default=1_000_000)
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
        for c in configs.values():
            c["rates"] = c["rates"][:3]
    only = set(args.only.split(","))
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
