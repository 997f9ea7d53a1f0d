"""The seed's pipeline end to end, through real processes: `edge-dev up` runs MqttServerModule and
AggregatorModule from the repository's deployment template (the query set to a 2-second tumbling window);
mosquitto_pub (Debian's client, not our code) publishes readings with known `timeCreated` values to the
MQTT server; the upstream log must hold exactly the windows and averages computed here from what was
published."""

import datetime as dt
import json
import math
import subprocess
import time

from conftest import free_port, template, wait_for, wait_port

WINDOW_QUERY = 'SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,2)'


def pipeline_manifest(mqtt_port):
    m = template()
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    # This test is the device: the simulator stays off so that every reading is one the test knows.
    agent["modules"]["ESPSimModule"]["status"] = "stopped"
    env = agent["modules"]["MqttServerModule"].setdefault("env", {})
    env["MQTT_PORT"] = {"value": str(mqtt_port)}
    m["modulesContent"]["AggregatorModule"]["properties.desired"]["query"] = WINDOW_QUERY
    return m


def window_end(t: dt.datetime, size=2) -> dt.datetime:
    """ASA tumbling windows are (start, end], aligned to the epoch: an event exactly at an end belongs to it."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    secs = (t - epoch).total_seconds()
    return epoch + dt.timedelta(seconds=math.ceil(secs / size) * size)


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(s: str) -> dt.datetime:
    s = s.replace("Z", "+00:00")
    if "." in s:  # Python 3.11 reads at most 6 fraction digits
        head, rest = s.split(".", 1)
        frac, _, zone = rest.partition("+")
        s = f"{head}.{frac[:6]}+{zone}" if zone else f"{head}.{frac[:6]}"
    return dt.datetime.fromisoformat(s)


def publish(port, topic, payload, qos=1):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos),
                    "-i", "sensor-test", "-m", payload], check=True, timeout=30)


def test_seed_pipeline_windows_and_averages(edge_dev_factory):
    mqtt_port = free_port()
    edge = edge_dev_factory(pipeline_manifest(mqtt_port)).start()
    wait_port(mqtt_port, timeout=60, proc=edge.proc)

    # Readings a little ahead of now, in increasing time (ASA's default out-of-order tolerance is 0),
    # spread over four 2-second windows, one exactly on a window boundary.
    now = dt.datetime.now(dt.timezone.utc)
    base = window_end(now + dt.timedelta(seconds=3))
    offsets = [0.0, 0.4, 1.3, 2.0, 2.1, 3.9, 4.5, 5.0, 6.2, 7.7]
    temps = [36.6, 37.0, 38.2, 39.1, 36.4, 37.8, 40.0, 35.9, 36.9, 37.3]
    sent = []
    for off, temp in zip(offsets, temps):
        t = base + dt.timedelta(seconds=off)
        sent.append((t, temp))
        publish(mqtt_port, "MyTopic", json.dumps({"temp": temp, "timeCreated": iso(t)}))

    expected = {}
    for t, temp in sent:
        expected.setdefault(window_end(t), []).append(temp)
    expected = {end: sum(v) / len(v) for end, v in expected.items()}

    def windows():
        rows = [r for r in edge.upstream() if r["module"] == "AggregatorModule" and r["output"] == "AvgTemp"]
        return rows if len(rows) >= len(expected) else None

    rows = wait_for(windows, 90, lambda: f"{len(expected)} AvgTemp windows upstream; edge-dev said:\n" + edge.output()[-3000:])
    time.sleep(3)  # nothing more may come
    rows = [r for r in edge.upstream() if r["output"] == "AvgTemp"]
    assert len(rows) == len(expected), rows
    got = {}
    for r in rows:
        # The seed's cloud query reads `avg`: an unaliased Avg("temp") is the only column.
        assert set(r["body"]) == {"avg"}, r["body"]
        # AggregatorModule puts the row's System.Timestamp() (the window end) in the property `timestamp`.
        got[parse_time(r["properties"]["timestamp"])] = r["body"]["avg"]
    assert sorted(got) == sorted(expected), (got, expected)
    for end, avg in expected.items():
        assert abs(got[end] - avg) < 1e-9, (end, got[end], avg)
