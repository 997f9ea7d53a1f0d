"""The template's clinical rules through real processes: `edge-dev up` runs MqttServerModule and
AggregatorModule with the template's own query and reference data, its time constants scaled 30 times
down (one-minute windows become 2 s; the simulator is off); paho-mqtt clients play four patients and
publish readings in real time; each alert kind must reach the upstream log exactly once per episode, for
the right patient, and the dashboard in headless Chromium must list each of them."""

import datetime as dt
import json
import re
import time

import paho.mqtt.client as mqtt

from conftest import free_port, template, wait_for, wait_port
from test_dashboard import browser, dashboard_url  # noqa: F401 (the fixture)

WINDOW = 2  # seconds: the template's 60 divided by SCALE
SCALE = 30


def scaled_query(q: str) -> str:
    q = re.sub(r"\(second, ?(\d+)\)", lambda m: "(second, %d)" % max(1, int(m.group(1)) // SCALE), q)
    q = q.replace("BETWEEN 1 AND 300", "BETWEEN 1 AND %d" % (300 // SCALE))
    return q


def manifest(mqtt_port):
    m = template()
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    agent["modules"]["ESPSimModule"]["status"] = "stopped"  # every reading is one the test chose
    agent["modules"]["MqttServerModule"].setdefault("env", {})["MQTT_PORT"] = {"value": str(mqtt_port)}
    agg = m["modulesContent"]["AggregatorModule"]["properties.desired"]
    agg["query"] = scaled_query(agg["query"])
    return m


def test_template_rules_alert_once_per_episode_and_show_on_the_dashboard(edge_dev_factory, browser):  # noqa: F811
    port = free_port()
    m = manifest(port)
    assert "TumblingWindow(second, 2)" in m["modulesContent"]["AggregatorModule"]["properties.desired"]["query"]
    edge = edge_dev_factory(m).start()
    url = dashboard_url(edge)
    wait_port(port, timeout=60, proc=edge.proc)

    patients = ["patient-00001", "patient-00002", "patient-00003", "stranger"]
    clients = {}
    for p in patients:
        c = mqtt.Client(client_id=p, clean_session=True)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients[p] = c

    def window_of(t: dt.datetime) -> int:
        return int((t - start).total_seconds() // WINDOW)

    # Windows are (start, end]: the test's window k is (start + 2k, start + 2k + 2].
    now = dt.datetime.now(dt.timezone.utc)
    start = dt.datetime.fromtimestamp((int(now.timestamp()) // WINDOW + 1) * WINDOW, dt.timezone.utc)
    time.sleep(max(0.0, (start - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 0.05)
    noise = [-0.02, 0.0, 0.02]
    spiked = False
    n = 0
    infos = []
    while True:
        t = dt.datetime.now(dt.timezone.utc)
        k = window_of(t)
        if k >= 20:
            break
        readings = {
            # threshold 37.8 (reference data): feverish in windows 4..8
            "patient-00001": 38.2 if 4 <= k <= 8 else 37.0,
            # one spike in window 6
            "patient-00002": 40.0 if (k == 6 and not spiked) else 37.2,
        }
        if readings["patient-00002"] == 40.0:
            spiked = True
        if k <= 3:  # then silent: patient-00003 is on the list, the stranger is not
            readings["patient-00003"] = 36.9
            readings["stranger"] = 37.0
        for p, temp in readings.items():
            n += 1
            body = {"deviceId": p, "temp": round(temp + noise[n % 3], 2),
                    "timeCreated": t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
            infos.append(clients[p].publish("home/" + p, json.dumps(body), qos=1))
        time.sleep(0.25)
    for i in infos:
        i.wait_for_publish(timeout=30)
        assert i.is_published()
    for c in clients.values():
        c.loop_stop()
        c.disconnect()

    expected = {("fever", "patient-00001"): 5, ("sustainedFever", "patient-00001"): 1,
                ("rapidRise", "patient-00001"): 1, ("spike", "patient-00001"): 1,
                ("spike", "patient-00002"): 1, ("silentSensor", "patient-00003"): 1}

    def alerts():
        got = {}
        for r in edge.upstream():
            kind = r["body"].get("alert") if isinstance(r.get("body"), dict) else None
            if r["module"] == "AggregatorModule" and kind:
                key = (kind, r["body"].get("deviceId"))
                got.setdefault(key, []).append(r)
        return got

    got = wait_for(lambda: (lambda g: g if all(len(g.get(k, [])) >= v for k, v in expected.items()) else None)(alerts()),
                   60, lambda: "every expected alert upstream; got %s\nedge-dev said:\n%s" % (
                       {k: len(v) for k, v in alerts().items()}, edge.output()[-4000:]))
    counts = {k: len(v) for k, v in got.items()}
    # Exactly once per episode, and nothing else (the streams of patients 1 and 2 ended just now: their
    # silence would only be reported 10 s after their last window).
    assert counts == expected, counts
    sustained = got[("sustainedFever", "patient-00001")][0]["body"]
    assert sustained["feverC"] == 37.8 and sustained["avgTemp"] >= 37.8, sustained
    spike = got[("spike", "patient-00002")][0]["body"]
    assert abs(spike["temp"] - 40.0) < 0.05 and spike["pValue"] < 0.001, spike
    # Every patient has a chart row upstream.
    charted = {r["body"]["deviceId"] for r in edge.upstream() if r["output"] == "PatientAvg"}
    assert charted == set(patients), charted

    # The dashboard lists each kind, with its patient.
    browser.get(url)
    wait_for(lambda: browser.find_element("id", "live").get_attribute("data-live") == "1", 30, "the event stream to open")

    def listed():
        items = browser.execute_script(
            "return [...document.querySelectorAll('#alerts li')].map(li => [li.dataset.kind, li.dataset.device, li.textContent]);")
        kinds = {(k, d) for k, d, _ in items}
        return items if all(k in kinds for k in expected) else None
    items = wait_for(listed, 30, lambda: "each alert kind on the page; it lists %s" % browser.execute_script(
        "return [...document.querySelectorAll('#alerts li')].map(li => li.textContent);"))
    text = {(k, d): t for k, d, t in items}
    assert "feverC 37.80 °C" in text[("sustainedFever", "patient-00001")], text
    assert "lastWindow" in text[("silentSensor", "patient-00003")], text
    assert edge.stop(timeout=60) == 0, edge.output()[-3000:]
