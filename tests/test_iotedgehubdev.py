"""What iotedgehubdev users do, done with edge-dev, with Microsoft's azure-iot-device (PyPI) as the module:
single-module mode with messages injected into its inputs over HTTP (iotedgehubdev's own request) and from the
CLI, desired properties changed while it runs, direct methods invoked, the upstream link taken down and up
at run time, and the monitor. Also edgeHub's rules a module can see: an output no route reads is still
acknowledged (and counted as unrouted), a subscription to another module's inputs is refused, and the SDK
keeps receiving after the hub restarts without subscribing again."""

import base64
import hashlib
import hmac
import json
import queue
import re
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import EDGE_DEV, wait_for

azure_device = pytest.importorskip("azure.iot.device", reason="pip install azure-iot-device (scripts/install-test-deps.sh does)")
from azure.iot.device import IoTHubModuleClient, Message, MethodResponse  # noqa: E402

from test_azure_sdk import SDK_PORT, sdk_manifest  # noqa: E402


def connect(edge, name="PyMod"):
    cs, ca = edge.module_cred(name)
    with open(ca) as f:
        client = IoTHubModuleClient.create_from_connection_string(cs, server_verification_cert=f.read())
    client.connect()
    return client


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def single_module(edge_dev_factory, name="PyMod"):
    # the manifest file the harness writes is not read in single-module mode
    return edge_dev_factory({}, hub_port=SDK_PORT, extra_args=["--single-module", name]).start()


def test_single_module_mode_inputs_from_http_and_the_cli(edge_dev_factory):
    edge = single_module(edge_dev_factory)
    api = edge.api_url()
    client = connect(edge)
    try:
        inbox = queue.Queue()
        client.on_message_received = inbox.put
        # iotedgehubdev's request, verbatim: the single module needs no name
        status, r = http("POST", api + "/api/v1/messages", {"inputName": "input1", "data": "hello world"})
        assert status == 200, r
        got = inbox.get(timeout=30)
        assert (got.input_name, got.data) == ("input1", b"hello world")

        out = edge.cli("send", "--input", "input2", "--data", '{"temp": 39.1}', "--property", "patient=p-9")
        assert "queued for PyMod/input2" in out
        got = inbox.get(timeout=30)
        assert got.input_name == "input2"
        assert json.loads(got.data) == {"temp": 39.1}
        assert got.content_type == "application/json"
        assert got.custom_properties["patient"] == "p-9"

        # errors say what is wrong
        status, r = http("POST", api + "/api/v1/messages", {"inputName": "in", "data": "x", "moduleName": "Nope"})
        assert status == 404 and "Nope" in r["error"]
        status, r = http("POST", api + "/api/v1/messages", {"data": "x"})
        assert status == 400 and "inputName" in r["error"]

        # the module's outputs go $upstream
        client.send_message_to_output(Message("up", message_id=str(uuid.uuid4())), "anything")
        wait_for(lambda: [x for x in edge.upstream() if x["module"] == "PyMod" and x["output"] == "anything"], 30,
                 "the output upstream")
    finally:
        client.shutdown()


def test_desired_properties_live_and_direct_methods(edge_dev_factory):
    edge = single_module(edge_dev_factory)
    api = edge.api_url()
    client = connect(edge)
    try:
        patches = queue.Queue()
        client.on_twin_desired_properties_patch_received = patches.put

        def on_method(req):
            client.send_method_response(MethodResponse.create_from_method_request(
                req, 200, {"method": req.name, "echo": req.payload}))
        client.on_method_request_received = on_method

        edge.cli("twin", "PyMod", "--patch", '{"threshold": 39.5, "ward": {"bed": 7}}')
        p = patches.get(timeout=30)
        assert p["threshold"] == 39.5 and p["ward"] == {"bed": 7} and isinstance(p["$version"], int)
        status, r = http("PATCH", api + "/api/v1/modules/PyMod/twin/desired", {"ward": {"bed": None, "room": 3}})
        assert status == 200 and r["version"] > p["$version"]
        p2 = patches.get(timeout=30)
        assert p2["ward"] == {"bed": None, "room": 3}
        assert client.get_twin()["desired"]["ward"] == {"room": 3}

        out = edge.cli("invoke", "PyMod", "reboot", "--payload", '{"delay": 1}')
        assert out.splitlines()[0] == "status 200"
        assert json.loads("\n".join(out.splitlines()[1:])) == {"method": "reboot", "echo": {"delay": 1}}
        status, r = http("POST", api + "/api/v1/modules/PyMod/methods/ping", {"payload": "x", "timeoutSecs": 10})
        assert status == 200 and r == {"status": 200, "payload": {"method": "ping", "echo": "x"}}
        status, r = http("POST", api + "/api/v1/modules/Nope/methods/ping", {})
        assert status == 404
    finally:
        client.shutdown()


def test_upstream_outage_on_demand_and_the_monitor(edge_dev_factory):
    edge = single_module(edge_dev_factory)
    edge.api_url()
    client = connect(edge)
    monitor = subprocess.Popen([str(EDGE_DEV), "--data-dir", str(edge.data_dir), "monitor", "--module", "PyMod",
                                "--count", "3"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # the monitor is subscribed
        assert "upstream offline" in edge.cli("upstream", "offline")
        for n in range(3):
            client.send_message_to_output(Message(json.dumps({"n": n}), content_type="application/json",
                                                  content_encoding="utf-8"), "out1")
        status = edge.cli("upstream")
        assert "offline (3 message(s) queued)" in status, status
        time.sleep(2)
        assert [r for r in edge.upstream() if r["module"] == "PyMod"] == [], "nothing delivered while offline"

        assert "upstream online" in edge.cli("upstream", "online")
        rows = wait_for(lambda: (lambda r: r if len(r) == 3 else None)(
            [r for r in edge.upstream() if r["module"] == "PyMod"]), 30, "the three messages after the link came up")
        assert [r["body"]["n"] for r in rows] == [0, 1, 2], "in order"

        out, _ = monitor.communicate(timeout=30)
        lines = [json.loads(line) for line in out.splitlines()]
        assert len(lines) == 3
        for n, e in enumerate(lines):
            assert e["module"] == "PyMod" and e["output"] == "out1"
            assert e["targets"] == ["$upstream"]
            assert e["body"] == {"n": n}
    finally:
        if monitor.poll() is None:
            monitor.kill()
        client.shutdown()


def sas_token(resource, key, ttl=3600):
    expiry = int(time.time()) + ttl
    sr = urllib.parse.quote(resource, safe="")
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}"


def test_what_a_module_sees_is_what_edgehub_shows_it(edge_dev_factory):
    """An output no route reads is acknowledged and counted as unrouted; a subscription to another module's
    inputs is refused; after the hub restarts the SDK gets its inputs without subscribing again."""
    import paho.mqtt.client as mqtt

    manifest = sdk_manifest()
    agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    agent["modules"]["Other"] = json.loads(json.dumps(agent["modules"]["PyMod"]))
    edge = edge_dev_factory(manifest, hub_port=SDK_PORT, external=["PyMod", "Other"]).start()
    # 1. with PyMod's own credentials (before the SDK connects: same client id), a subscription to Other's
    # inputs is refused (SUBACK 0x80)
    cs, ca = edge.module_cred("PyMod")
    parts = dict(p.split("=", 1) for p in cs.split(";"))
    hub, device, module = parts["HostName"], parts["DeviceId"], parts["ModuleId"]
    granted = queue.Queue()
    c = mqtt.Client(client_id=f"{device}/{module}", protocol=mqtt.MQTTv311)
    c.username_pw_set(f"{hub}/{device}/{module}/?api-version=2018-06-30",
                      sas_token(f"{hub}/devices/{device}/modules/{module}", parts["SharedAccessKey"]))
    c.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLSv1_2)
    c.on_subscribe = lambda cl, u, mid, qos: granted.put(qos)
    c.connect("localhost", SDK_PORT)
    c.loop_start()
    try:
        c.subscribe(f"devices/{device}/modules/Other/inputs/#", qos=1)
        assert granted.get(timeout=30) == (128,), "refused"
        c.subscribe(f"devices/{device}/modules/{module}/inputs/#", qos=1)
        assert granted.get(timeout=30) == (1,), "its own inputs are fine"
    finally:
        c.disconnect()
        c.loop_stop()

    client = connect(edge)
    try:
        # 2. no route reads output "nowhere": the SDK's send completes (PUBACK), the hub counts it
        client.send_message_to_output(Message("lost"), "nowhere")
        dash = wait_for(lambda: (re.findall(r"dashboard (http://127\.0\.0\.1:\d+)", edge.output()) or [None])[-1],
                        30, "dashboard")
        def unrouted():
            with urllib.request.urlopen(dash + "/api/health", timeout=30) as r:
                return json.loads(r.read())["unrouted"] >= 1
        wait_for(unrouted, 30, "the unrouted count")

        # 3. the hub restarts; the SDK reconnects by itself and, without subscribing again, gets its input
        inbox = queue.Queue()
        client.on_message_received = inbox.put
        time.sleep(2)  # the SDK subscribes to its inputs (once: it relies on the hub keeping the session)
        assert edge.stop() == 0
        edge.start()
        api = edge.api_url()
        status, r = http("POST", api + "/api/v1/messages", {"inputName": "in1", "data": "after restart",
                                                             "moduleName": "PyMod"})
        assert status == 200, r
        got = inbox.get(timeout=60)
        assert (got.input_name, got.data) == ("in1", b"after restart")
    finally:
        client.shutdown()
