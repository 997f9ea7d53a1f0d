"""A module written with Microsoft's azure-iot-device SDK (2.x), driven by hub_python_sdk.rs.

The SDK always connects to port 8883; the test hub listens on a free port, so paho's connect is
redirected to HUB_PORT (nothing else of the SDK's behaviour is changed).
"""
import json
import os
import sys
import threading

import paho.mqtt.client as mqtt

_port = int(os.environ["HUB_PORT"])
_orig_connect = mqtt.Client.connect


def _connect(self, host, port=1883, *args, **kwargs):
    return _orig_connect(self, host, _port, *args, **kwargs)


mqtt.Client.connect = _connect

from azure.iot.device import IoTHubModuleClient, Message, MethodResponse  # noqa: E402


def say(*parts):
    print(*parts, flush=True)


with open(os.environ["EdgeModuleCACertificateFile"]) as f:
    ca = f.read()
client = IoTHubModuleClient.create_from_connection_string(
    os.environ["EdgeHubConnectionString"], server_verification_cert=ca, connection_retry_interval=1
)
client.connect()
say("TWIN", json.dumps(client.get_twin()))
client.patch_twin_reported_properties({"python": True})
say("REPORTED")

msg = Message(json.dumps({"temp": 38}), content_encoding="utf-8", content_type="application/json")
msg.message_id = "py-1"
msg.custom_properties["k"] = "v/w"
client.send_message_to_output(msg, "out1")
say("SENT")


def on_message(m):
    say("INPUT", m.input_name, m.data.decode(), json.dumps(m.custom_properties))


def on_patch(p):
    say("PATCH", json.dumps(p))


def on_method(req):
    client.send_method_response(MethodResponse.create_from_method_request(req, 200, {"echo": req.payload, "name": req.name}))


client.on_message_received = on_message
client.on_twin_desired_properties_patch_received = on_patch
client.on_method_request_received = on_method
say("HANDLERS")

for line in sys.stdin:
    if line.strip() == "quit":
        break
client.shutdown()
say("BYE")
