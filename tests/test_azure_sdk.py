"""Microsoft's own module client against edge-dev: the Python azure-iot-device SDK (PyPI), run as a module
with `--external` and the connection string from `edge-dev module-cred`, exactly as on a device with
edgeHub: TLS on port 8883 to the gateway host name, SAS token, twin, outputs, inputs.

Also the store-and-forward promise: what the hub acknowledged before a `kill -9` reaches upstream after it
restarts."""

import json
import queue
import uuid

import pytest

from conftest import wait_for

azure_device = pytest.importorskip("azure.iot.device", reason="pip install azure-iot-device (scripts/install-test-deps.sh does)")
from azure.iot.device import IoTHubModuleClient, Message  # noqa: E402

# The SDK always connects to port 8883 (GatewayHostName cannot carry a port), so these tests use it.
SDK_PORT = 8883


def sdk_manifest():
    return {
        "modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
                "systemModules": {
                    "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.6", "createOptions": "{}"}},
                    "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                                "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.6", "createOptions": "{}"}},
                },
                "modules": {
                    "PyMod": {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
                              "settings": {"image": "example.azurecr.io/pymod:1.0.0-amd64", "createOptions": "{}"}},
                },
            }},
            "$edgeHub": {"properties.desired": {
                "schemaVersion": "1.1",
                "routes": {
                    "toCloud": "FROM /messages/modules/PyMod/outputs/out1 INTO $upstream",
                    "loopBack": {"route": "FROM /messages/modules/PyMod/outputs/loop WHERE $body.kind = 'ping' INTO BrokeredEndpoint(\"/modules/PyMod/inputs/in1\")",
                                 "priority": 0, "timeToLiveSecs": 3600},
                },
                "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
            }},
            "PyMod": {"properties.desired": {"greeting": "hello", "threshold": 38.0}},
        }
    }


def connect(edge):
    cs, ca = edge.module_cred("PyMod")
    with open(ca) as f:
        client = IoTHubModuleClient.create_from_connection_string(cs, server_verification_cert=f.read())
    client.connect()
    return client


def json_message(body, **props):
    m = Message(json.dumps(body), message_id=str(uuid.uuid4()), content_encoding="utf-8", content_type="application/json")
    m.custom_properties.update(props)
    return m


def test_microsoft_module_client_twin_outputs_and_inputs(edge_dev_factory):
    edge = edge_dev_factory(sdk_manifest(), hub_port=SDK_PORT, external=["PyMod"]).start()
    client = connect(edge)
    try:
        twin = client.get_twin()
        assert twin["desired"]["greeting"] == "hello"
        assert twin["desired"]["threshold"] == 38.0
        assert isinstance(twin["desired"]["$version"], int)

        inbox = queue.Queue()
        client.on_message_received = inbox.put

        out = json_message({"temp": 37.1}, patient="p-7")
        client.send_message_to_output(out, "out1")
        # Routed by a $body condition to the module's own input.
        client.send_message_to_output(json_message({"kind": "ping", "n": 1}), "loop")
        client.send_message_to_output(json_message({"kind": "other", "n": 2}), "loop")  # matches no route

        got = inbox.get(timeout=30)
        assert got.input_name == "in1"
        assert json.loads(got.data) == {"kind": "ping", "n": 1}
        assert got.content_type == "application/json"
        with pytest.raises(queue.Empty):
            inbox.get(timeout=2)

        client.patch_twin_reported_properties({"state": "ok", "nested": {"a": 1}})
        client.patch_twin_reported_properties({"nested": {"b": 2}})
        reported = client.get_twin()["reported"]
        assert reported["state"] == "ok" and reported["nested"] == {"a": 1, "b": 2}

        rows = wait_for(lambda: [r for r in edge.upstream() if r["output"] == "out1"], 30, "out1 upstream")
        assert len(rows) == 1
        r = rows[0]
        assert r["module"] == "PyMod"
        assert r["body"] == {"temp": 37.1}
        assert r["properties"]["patient"] == "p-7"
        assert r["systemProperties"]["$.mid"] == out.message_id
        assert r["systemProperties"]["$.cmid"] == "PyMod"
        assert r["systemProperties"]["$.cdid"]
    finally:
        client.shutdown()


def test_acknowledged_messages_survive_kill_9(edge_dev_factory):
    # --offline plays a lost internet connection: upstream messages stay in the durable queue.
    edge = edge_dev_factory(sdk_manifest(), hub_port=SDK_PORT, external=["PyMod"]).start(extra=["--offline"])
    client = connect(edge)
    ids = []
    try:
        for n in range(25):
            m = json_message({"n": n})
            client.send_message_to_output(m, "out1")  # returns once the hub has PUBACKed
            ids.append(m.message_id)
    finally:
        client.disconnect()
    edge.kill9()
    assert edge.upstream() == []

    edge.start()  # online again, same data folder
    rows = wait_for(lambda: (lambda r: r if len(r) >= len(ids) else None)([x for x in edge.upstream() if x["output"] == "out1"]),
                    60, lambda: "25 messages upstream after the restart:\n" + edge.output()[-3000:])
    got = [r["systemProperties"]["$.mid"] for r in rows]
    assert sorted(set(got)) == sorted(ids)
    assert [r["body"]["n"] for r in rows] == list(range(25)), "order kept"
    client.shutdown()
