"""Bad input to edge-dev itself: a bad route, a route to a module that does not exist, createOptions that are
not JSON, and a module that crashes. Each gives a message that says what is wrong, and nothing panics."""

import subprocess
import time

from conftest import EDGE_DEV, REPO, free_port, template, wait_for


def run_up(tmp_path, manifest, timeout=60):
    import json
    path = tmp_path / "deployment.template.json"
    path.write_text(json.dumps(manifest))
    return subprocess.run(
        [str(EDGE_DEV), "--data-dir", str(tmp_path / "data"), "up", "--manifest", str(path),
         "--modules-dir", str(REPO / "modules"), "--hub-listen", f"127.0.0.1:{free_port()}", "--duration", "1"],
        capture_output=True, text=True, timeout=timeout)


def routes(m):
    return m["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]


def test_a_bad_route_names_the_route_and_the_column(tmp_path):
    m = template()
    routes(m)["aggregatorToCloud"] = "FROM /messages/modules/AggregatorModule/* INT $upstream"
    r = run_up(tmp_path, m)
    assert r.returncode != 0
    assert "aggregatorToCloud" in r.stderr and "column" in r.stderr, r.stderr
    assert "panicked" not in r.stderr


def test_a_route_to_an_unknown_module_is_refused_before_anything_starts(tmp_path):
    m = template()
    routes(m)["mqttserverToAggregator"] = ('FROM /messages/modules/MqttServerModule/outputs/output1 '
                                           'INTO BrokeredEndpoint("/modules/AgregatorModule/inputs/temperature")')
    r = run_up(tmp_path, m)
    assert r.returncode != 0
    assert "AgregatorModule" in r.stderr, r.stderr
    assert "module(s) started" not in r.stdout


def test_create_options_that_are_not_json_name_the_module(tmp_path):
    m = template()
    mod = m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["MqttServerModule"]
    mod["settings"]["createOptions"] = '{"HostConfig": {'
    r = run_up(tmp_path, m)
    assert r.returncode != 0
    assert "MqttServerModule" in r.stderr and "createOptions" in r.stderr, r.stderr


def test_a_dashboard_beyond_loopback_without_a_token_is_refused(tmp_path):
    """Patients' data must not be served to the network without a secret: `--dashboard 0.0.0.0:PORT`
    without a token stops edge-dev with what to do, before the dashboard binds anything."""
    import json
    path = tmp_path / "deployment.template.json"
    path.write_text(json.dumps(template()))
    r = subprocess.run(
        [str(EDGE_DEV), "--data-dir", str(tmp_path / "data"), "up", "--manifest", str(path),
         "--modules-dir", str(REPO / "modules"), "--hub-listen", f"127.0.0.1:{free_port()}",
         "--api", "127.0.0.1:0", "--dashboard", f"0.0.0.0:{free_port()}", "--duration", "1"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in __import__("os").environ.items() if k != "EDGE_DEV_DASHBOARD_TOKEN"})
    assert r.returncode != 0, r.stdout + r.stderr
    assert "give it a token" in r.stderr and "--dashboard-token" in r.stderr, r.stderr
    assert "panicked" not in r.stderr
    assert "dashboard http://" not in r.stdout


def test_a_crashing_module_is_restarted_with_back_off_and_the_rest_keeps_running(edge_dev_factory):
    m = template()
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    agent["modules"]["ESPSimModule"]["status"] = "stopped"
    agent["modules"]["MqttServerModule"].setdefault("env", {})["MQTT_PORT"] = {"value": str(free_port())}
    # An invalid setting makes AggregatorModule exit with an error at start, every time.
    agent["modules"]["AggregatorModule"].setdefault("env", {})["AGGREGATOR_TICK_MS"] = {"value": "fast"}
    edge = edge_dev_factory(m).start()
    wait_for(lambda: edge.output().count("restarting in") >= 2, 60,
             lambda: "two restarts of AggregatorModule:\n" + edge.output()[-3000:])
    out = edge.output()
    assert "AGGREGATOR_TICK_MS" in out, "the module says which setting is wrong"
    assert "panicked" not in out
    time.sleep(1)
    assert edge.proc.poll() is None, "edge-dev keeps running"
    assert edge.stop() == 0
