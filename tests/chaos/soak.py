#!/usr/bin/env python3
"""Soak: the pipeline at a steady rate for an hour, its footprint sampled every 10 s.

    python3 tests/chaos/soak.py --bin-dir /tmp/tgt-chaos/release --csv soak.csv --summary soak.json

`edge-dev up` on the template (simulator stopped, pass-through query, as tests/chaos/run.py) and a paho fleet
(tests/chaos/loadgen.py: 50 devices, 500 readings/s at QoS 1, every publish and PUBACK logged). Every
--interval seconds, per process (edge-dev, MqttServerModule, AggregatorModule, the fleet): RSS, open file
descriptors, CPU seconds; on disk: the hub's store (data/hub), AggregatorModule's folder (its input log and
checkpoint), MqttServerModule's folder; the upstream queue depth (control API) and the readings acknowledged /
upstream so far. Near the end the upstream link goes down for --outage seconds (`edge-dev upstream offline`)
so the store grows, then comes back: the summary shows whether the store shrinks once the queue drained.

The summary has, per series, start, end, max and the least-squares slope per hour over the steady part
(from 2 minutes in until the outage), and the accounting (acknowledged readings missing upstream must be 0;
exit 1 otherwise)."""

import argparse
import csv
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run as chaos  # noqa: E402

PROCS = {"edge-dev": "edge-dev", "mqtt-server": "mqtt-server", "aggregator": "aggregator"}


def proc_stats(pid):
    try:
        rss = 0
        for ln in open(f"/proc/{pid}/status"):
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1]) * 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        return rss, fds, cpu
    except (OSError, IndexError, ValueError):
        return None


def du(path):
    total = 0
    for root, dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def slope_per_hour(ts, ys):
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600


def summarize(rows, fields, args, outage_at, outage_done, acct_summary):
    """Per series start, end, max and the least-squares slope per hour over the steady part."""
    steady_to = args.steady_to if args.steady_to else outage_at
    steady = [r for r in rows if args.steady_from <= r["t"] < steady_to and r["phase"] == "load"]
    series = {}
    for key in fields[2:]:
        vals = [(r["t"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if not vals:
            continue
        sv = [(r["t"], r[key]) for r in steady if r.get(key) not in (None, "")]
        series[key] = {"start": vals[0][1], "end": vals[-1][1], "max": max(v for _, v in vals),
                       "slope_per_hour_steady": round(slope_per_hour([a for a, _ in sv], [b for _, b in sv]), 1)}
    out = [r for r in rows if r["phase"] == "outage"]
    after = [r for r in rows if outage_done and r["t"] >= outage_at + args.outage]
    store = {}
    if out:
        store["hub_bytes_before_outage"] = [r for r in rows if r["t"] < outage_at][-1]["hub_bytes"]
        store["hub_bytes_outage_max"] = max(r["hub_bytes"] for r in out)
        store["depth_outage_max"] = max((r["depth"] or 0) for r in out)
        drained = [r for r in after if r["depth"] == 0]
        store["seconds_to_drain"] = round(drained[0]["t"] - (outage_at + args.outage), 1) if drained else None
        store["hub_bytes_end"] = rows[-1]["hub_bytes"]
        store["agg_dir_bytes_end"] = rows[-1]["agg_dir_bytes"]
    elapsed = rows[-1]["t"] if rows else 0
    loaded = [r for r in rows if r["t"] <= args.duration]
    rate = (loaded[-1]["acked"] - loaded[0]["acked"]) / (loaded[-1]["t"] - loaded[0]["t"]) if len(loaded) > 1 else 0
    return {"args": vars(args), "steady": [args.steady_from, steady_to], "samples": len(rows), "elapsed": elapsed, "acked_rate_per_s": round(rate, 1),
               "accounting": acct_summary, "store": store, "series": series}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin-dir", default=os.environ.get("EDGE_DEV_BIN_DIR", str(chaos.REPO / "target" / "release")))
    p.add_argument("--duration", type=float, default=3600)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--outage", type=float, default=120, help="seconds of upstream outage near the end (0: none)")
    p.add_argument("--outage-at", type=float, default=None, help="seconds from start (default: duration - 900)")
    p.add_argument("--after", type=float, default=120, help="seconds sampled after the load stopped, at least")
    p.add_argument("--after-max", type=float, default=900,
                   help="sampling goes on after the load stopped until the queue drained, at most this long")
    p.add_argument("--csv", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--steady-from", type=float, default=120, help="the steady part starts here (s)")
    p.add_argument("--steady-to", type=float, default=None, help="and ends here (default: the outage)")
    p.add_argument("--from-csv", action="store_true", help="only summarise an existing --csv")
    args = p.parse_args()
    outage_at = args.outage_at if args.outage_at is not None else max(0, args.duration - 900)

    if args.from_csv:
        with open(args.csv) as f:
            rows = [{k: (v if k == "phase" else (float(v) if v not in ("", None) else "")) for k, v in r.items()}
                    for r in csv.DictReader(f)]
        fields = list(rows[0].keys())
        outage_done = any(r["phase"] == "outage" for r in rows)
        summary = summarize(rows, fields, args, outage_at, outage_done, {})
        pathlib.Path(args.summary).write_text(json.dumps(summary, indent=2, default=str))
        print(json.dumps(summary, indent=2, default=str))
        return 0
    bin_dir = pathlib.Path(args.bin_dir).resolve()
    root = pathlib.Path(tempfile.mkdtemp(prefix="edge-soak-"))
    chaos.log(f"soak: {args.duration:.0f} s at {args.rate:.0f}/s, {args.devices} devices, binaries {bin_dir}, work {root}")
    stop_req = []  # SIGTERM ends the sampling early; the summary is still written
    signal.signal(signal.SIGTERM, lambda *a: stop_req.append(1))
    pipe = load = None
    rows = []
    fields = ["t", "phase", "acked", "upstream", "depth", "hub_bytes", "agg_dir_bytes", "mqtt_dir_bytes", "data_bytes"]
    for name in list(PROCS) + ["loadgen"]:
        fields += [f"{name}_rss", f"{name}_fds", f"{name}_cpu"]
    try:
        mqtt_port = chaos.free_port()
        pipe = chaos.Pipeline(root, bin_dir, mqtt_port)
        pipe.start()
        load = chaos.Load(root, mqtt_port, args.devices, args.rate, prefix="soak")
        acct = chaos.Account(load.sent_log, pipe.upstream_log)
        api = pipe.data / "api.url"
        chaos.wait_until(lambda: api.exists() and api.read_text().strip(), 30, "the control API")
        api_url = api.read_text().strip()
        t0 = time.monotonic()
        phase = "load"
        outage_done = False
        load_stopped_at = None
        next_sample = t0
        f = open(args.csv, "w", newline="")
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        while not stop_req:
            now = time.monotonic()
            t = now - t0
            if phase == "load" and not outage_done and args.outage and t >= outage_at:
                pipe.cli("upstream", "offline")
                phase = "outage"
                chaos.log("upstream offline")
            if phase == "outage" and t >= outage_at + args.outage:
                pipe.cli("upstream", "online")
                phase, outage_done = "load", True
                chaos.log("upstream online")
            if load_stopped_at is None and t >= args.duration:
                load.stop()
                load_stopped_at = t
                phase = "drained"
                chaos.log("load stopped")
            if load_stopped_at is not None and t >= load_stopped_at + args.after:
                acct.poll()
                if (rows and rows[-1]["depth"] == 0 and not acct.missing()) or t >= load_stopped_at + args.after_max:
                    break
            if now >= next_sample:
                next_sample += args.interval
                acct.poll()
                row = {"t": round(t, 1), "phase": phase, "acked": len(acct.acked), "upstream": len(acct.up)}
                try:
                    with urllib.request.urlopen(api_url.rstrip("/") + "/api/v1/upstream", timeout=5) as r:
                        row["depth"] = json.loads(r.read())["depth"]
                except Exception:
                    row["depth"] = ""
                row["hub_bytes"] = du(pipe.data / "hub")
                row["agg_dir_bytes"] = du(pipe.data / "modules" / "AggregatorModule")
                row["mqtt_dir_bytes"] = du(pipe.data / "modules" / "MqttServerModule")
                row["data_bytes"] = du(pipe.data)
                pids = {"edge-dev": pipe.proc.pid}
                for pid, comm in chaos.children(pipe.proc.pid).items():
                    for name, c in PROCS.items():
                        if comm.startswith(c[:15]) and name != "edge-dev":
                            pids[name] = pid
                if load.proc.poll() is None:
                    pids["loadgen"] = load.proc.pid
                for name in list(PROCS) + ["loadgen"]:
                    s = proc_stats(pids[name]) if name in pids else None
                    if s:
                        row[f"{name}_rss"], row[f"{name}_fds"], row[f"{name}_cpu"] = s
                rows.append(row)
                w.writerow(row)
                f.flush()
                if len(rows) % 30 == 1:
                    chaos.log(f"t={t:.0f} acked={row['acked']} upstream={row['upstream']} depth={row['depth']} "
                              f"hub={row['hub_bytes'] >> 20} MB rss(edge-dev)={row.get('edge-dev_rss', 0) >> 20} MB")
            time.sleep(max(0.0, min(1.0, next_sample - time.monotonic())))
        f.close()
    finally:
        if load:
            load.stop()
        if pipe:
            pipe.stop()
        acct_summary = acct.summary() if 'acct' in dir() else {}
        if args.keep:
            chaos.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    summary = summarize(rows, fields, args, outage_at, outage_done, acct_summary)
    pathlib.Path(args.summary).write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return 1 if acct_summary.get("missing") else 0


if __name__ == "__main__":
    sys.exit(main())
