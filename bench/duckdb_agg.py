"""The batch reference of the aggregation benchmark: DuckDB (PyPI `duckdb`, one thread) computes the same
windows as `aggregator replay` over the same JSON-lines file, with its own JSON reader. It is not a
streaming engine (it sees the whole file before it answers), so it shows what parsing and aggregating the
file costs when nothing else is asked for.

Workloads (the file's events are `{"deviceId", "temp", "timeCreated"}`; no event lies on a window edge,
where ASA's `(start, end]` and DuckDB's `time_bucket`'s `[start, end)` would differ):
  A  SELECT Avg("temp") .. GROUP BY TumblingWindow(second,60)                  (one group per window)
  B  SELECT deviceId, Avg(temp), Max(temp), Count(*) .. GROUP BY deviceId, TumblingWindow(second,60)
  C  SELECT deviceId, Avg(temp), Max(temp), Count(*) .. GROUP BY deviceId, HoppingWindow(second,60,10)

Prints one JSON line per row, ordered by window end then device, with the window end as
`2026-11-24T00:01:00Z`; prints the query's own time (without Python's start) on stderr.

Usage: python bench/duckdb_agg.py EVENTS.jsonl A|B|C > rows.jsonl
"""

import json
import sys
import time

import duckdb

READ = ("read_json('{path}', format='newline_delimited', "
        "columns={{deviceId: 'VARCHAR', temp: 'DOUBLE', timeCreated: 'TIMESTAMP'}})")

QUERIES = {
    "A": """SELECT time_bucket(INTERVAL 60 SECOND, timeCreated) + INTERVAL 60 SECOND AS w, NULL AS d,
                   avg(temp) AS avg, NULL AS max, NULL AS n
            FROM {src} GROUP BY w ORDER BY w""",
    "B": """SELECT time_bucket(INTERVAL 60 SECOND, timeCreated) + INTERVAL 60 SECOND AS w, deviceId AS d,
                   avg(temp) AS avg, max(temp) AS max, count(*) AS n
            FROM {src} GROUP BY w, d ORDER BY w, d""",
    # each event is in the six 60 s windows whose end is one of the next six 10 s boundaries
    "C": """SELECT time_bucket(INTERVAL 10 SECOND, timeCreated) + INTERVAL 10 SECOND * (k + 1) AS w,
                   deviceId AS d, avg(temp) AS avg, max(temp) AS max, count(*) AS n
            FROM {src}, range(6) AS r(k) GROUP BY w, d ORDER BY w, d""",
}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in QUERIES:
        sys.exit(__doc__)
    path, workload = sys.argv[1], sys.argv[2]
    con = duckdb.connect()
    con.execute("SET threads = 1")
    t0 = time.monotonic()
    rows = con.execute(QUERIES[workload].format(src=READ.format(path=path))).fetchall()
    took = time.monotonic() - t0
    out = sys.stdout
    for w, d, avg, mx, n in rows:
        row = {"windowEnd": w.strftime("%Y-%m-%dT%H:%M:%SZ"), "avg": avg}
        if d is not None:
            row.update({"deviceId": d, "max": mx, "n": n})
        out.write(json.dumps(row) + "\n")
    print(f"duckdb query: {took:.3f} s, {len(rows)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
