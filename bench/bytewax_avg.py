"""The peer of `aggregator replay` in the aggregation benchmark: bytewax computes the seed's query,

    SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)

over the same JSON-lines events file: every event parsed from JSON, its `timeCreated` read as the event
time, one tumbling 60 s window aligned to the epoch, the average of `temp` per window, one JSON line per
window on stdout (`{"windowEnd": "...", "avg": ...}`). One worker, like the single-threaded engine.

Usage: python bench/bytewax_avg.py EVENTS.jsonl > rows.jsonl
"""

import json
import sys
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.connectors.files import FileSource
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.testing import run_main

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse(line):
    e = json.loads(line)
    return ("all", (datetime.fromisoformat(e["timeCreated"]), e["temp"]))


def fold(acc, item):
    acc[0] += item[1]
    acc[1] += 1
    return acc


def merge(a, b):
    return [a[0] + b[0], a[1] + b[1]]


def build(path):
    flow = Dataflow("avg_temp")
    lines = op.input("in", flow, FileSource(path, batch_size=10_000))
    keyed = op.map("parse", lines, parse)
    # Event time only: by default bytewax's watermark also advances with the system clock between batches,
    # which marks in-order events late (and drops them from the window) whenever processing is slower than
    # event time. A fixed "now" makes the watermark the largest event time seen, like ASA's with an
    # out-of-order tolerance of 0; every window closes at the end of the file.
    clock = EventClock(
        ts_getter=lambda item: item[0],
        wait_for_system_duration=timedelta(seconds=0),
        now_getter=lambda: EPOCH,
        to_system_utc=lambda _ts: None,
    )
    windower = TumblingWindower(length=timedelta(seconds=60), align_to=EPOCH)
    out = fold_window("avg", keyed, clock, windower, builder=lambda: [0.0, 0], folder=fold, merger=merge)

    def row(kv):
        _key, (window_id, (total, count)) = kv
        end = EPOCH + timedelta(seconds=60 * (window_id + 1))
        return json.dumps({"windowEnd": end.strftime("%Y-%m-%dT%H:%M:%SZ"), "avg": total / count})

    op.output("out", op.map("row", out.down, row), StdOutSink())
    # Late events would be left out of the averages: say so (there are none in the benchmark's file).
    op.inspect("late", out.late, lambda _step, item: print(f"late event: {item}", file=sys.stderr))
    return flow


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run_main(build(sys.argv[1]))
