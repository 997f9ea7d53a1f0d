"""The peer of `aggregator replay` in the aggregation benchmark: bytewax computes the benchmark's queries over
the same JSON-lines events file (`{"deviceId", "temp", "timeCreated"}`): every event parsed from JSON, its
`timeCreated` read as the event time, windows aligned to the epoch, one JSON line per window (and device) on
stdout. One worker, like the single-threaded engine.

Workloads (as in bench/duckdb_agg.py; no event of the benchmark's files lies on a 10 s or 60 s edge, where
ASA's `(start, end]` and bytewax's `[start, end)` would differ):
  A  SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)
     one key for every event; TumblingWindower(60 s); fold (sum, count)       -> {"windowEnd", "avg"}
  B  SELECT deviceId, Avg(temp) AS avg, Max(temp) AS max, Count(*) AS n .. GROUP BY deviceId, TumblingWindow(second,60)
     keyed by deviceId; TumblingWindower(60 s); fold (sum, count, max)        -> {"windowEnd", "deviceId", "avg", "max", "n"}
  C  the same SELECT .. GROUP BY deviceId, HoppingWindow(second,60,10)
     keyed by deviceId; SlidingWindower(length 60 s, offset 10 s); the same fold and rows

Usage: python bench/bytewax_avg.py EVENTS.jsonl [A|B|C] > rows.jsonl      (default A)
"""

import json
import sys
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.connectors.files import FileSource
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, SlidingWindower, TumblingWindower, fold_window
from bytewax.testing import run_main

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MINUTE = timedelta(seconds=60)
HOP = timedelta(seconds=10)


def parse_all(line):
    e = json.loads(line)
    return ("all", (datetime.fromisoformat(e["timeCreated"]), e["temp"]))


def parse_device(line):
    e = json.loads(line)
    return (e["deviceId"], (datetime.fromisoformat(e["timeCreated"]), e["temp"]))


def fold_avg(acc, item):
    acc[0] += item[1]
    acc[1] += 1
    return acc


def merge_avg(a, b):
    return [a[0] + b[0], a[1] + b[1]]


def fold_stats(acc, item):
    t = item[1]
    acc[0] += t
    acc[1] += 1
    if acc[2] is None or t > acc[2]:
        acc[2] = t
    return acc


def merge_stats(a, b):
    return [a[0] + b[0], a[1] + b[1], b[2] if a[2] is None or (b[2] is not None and b[2] > a[2]) else a[2]]


def build(path, workload="A"):
    flow = Dataflow(f"agg_{workload}")
    lines = op.input("in", flow, FileSource(path, batch_size=10_000))
    keyed = op.map("parse", lines, parse_all if workload == "A" else parse_device)
    # Event time only: by default bytewax's watermark also advances with the system clock between batches,
    # which marks in-order events late (and drops them from the window) whenever processing is slower than
    # event time. A fixed "now" makes the watermark the largest event time seen (per key: bytewax keeps a
    # clock per key), like ASA's with an out-of-order tolerance of 0; every window closes at the end of the
    # file.
    clock = EventClock(
        ts_getter=lambda item: item[0],
        wait_for_system_duration=timedelta(seconds=0),
        now_getter=lambda: EPOCH,
        to_system_utc=lambda _ts: None,
    )
    if workload == "C":
        length, offset = MINUTE, HOP
        windower = SlidingWindower(length=length, offset=offset, align_to=EPOCH)
    else:
        length = offset = MINUTE
        windower = TumblingWindower(length=length, align_to=EPOCH)

    def end_of(window_id):
        # bytewax's window k opens at align_to + k * offset and closes length later (SlidingWindowerLogic).
        return (EPOCH + offset * window_id + length).strftime("%Y-%m-%dT%H:%M:%SZ")

    if workload == "A":
        out = fold_window("avg", keyed, clock, windower, builder=lambda: [0.0, 0], folder=fold_avg,
                          merger=merge_avg)

        def row(kv):
            _key, (window_id, (total, count)) = kv
            return json.dumps({"windowEnd": end_of(window_id), "avg": total / count})
    else:
        out = fold_window("stats", keyed, clock, windower, builder=lambda: [0.0, 0, None], folder=fold_stats,
                          merger=merge_stats)

        def row(kv):
            device, (window_id, (total, count, mx)) = kv
            return json.dumps({"windowEnd": end_of(window_id), "deviceId": device, "avg": total / count,
                               "max": mx, "n": count})

    op.output("out", op.map("row", out.down, row), StdOutSink())
    # Late events would be left out of the windows: say so (there are none in the benchmark's files).
    op.inspect("late", out.late, lambda _step, item: print(f"late event: {item}", file=sys.stderr))
    return flow


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in ("A", "B", "C")):
        sys.exit(__doc__)
    run_main(build(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "A"))
