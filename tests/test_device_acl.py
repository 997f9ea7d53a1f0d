"""MqttServerModule's ACL file end to end, with real processes and clients nobody here wrote: `mosquitto_passwd`
(Debian) writes the password file, `edge-dev up` runs the real mqtt-server binary against its hub, paho-mqtt
devices log in, and the upstream log shows what reached the cloud side.

The ACL gives each sensor write access under its own client id only (`pattern write sensors/%c/#`) and the
bedside display read access to every sensor. A sensor's own reading is acknowledged and arrives upstream; a
reading it publishes under another sensor's topic is refused (MQTT 5: PUBACK/PUBREC reason 0x87, read off the
wire, since paho 1.x does not report it) and never arrives; a subscription outside the ACL gets a failure code;
and an ACL file with a mistake stops the binary with a message naming the line."""

import os
import socket
import struct
import subprocess
import threading
import urllib.request

import paho.mqtt.client as mqtt

from conftest import BIN_DIR, free_port, template, wait_for, wait_port

MQTT_SERVER = BIN_DIR / "mqtt-server"

ACL = """\
# each sensor publishes only under its own client id
pattern write sensors/%c/#

# the bedside display reads every sensor
user display
topic read sensors/#
"""


def mosquitto_passwd(path, user, password, create=False):
    args = ["mosquitto_passwd", "-b"] + (["-c"] if create else []) + [str(path), user, password]
    subprocess.run(args, check=True, timeout=30, capture_output=True)


def manifest(mqtt_port, metrics_port, passwd, acl):
    m = template()
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    # the test is every device; only MqttServerModule and the hub run
    agent["modules"]["ESPSimModule"]["status"] = "stopped"
    agent["modules"]["AggregatorModule"]["status"] = "stopped"
    agent["modules"]["MqttServerModule"]["env"] = {
        "MQTT_BIND_ADDRESS": {"value": "127.0.0.1"},
        "MQTT_PORT": {"value": str(mqtt_port)},
        "MQTT_METRICS_PORT": {"value": str(metrics_port)},
        "MQTT_AUTH_FILE": {"value": str(passwd)},
        "MQTT_ACL_FILE": {"value": str(acl)},
    }
    # what MqttServerModule forwards goes straight upstream, where the test can see it
    m["modulesContent"]["$edgeHub"]["properties.desired"]["routes"] = {
        "mqttToCloud": "FROM /messages/modules/MqttServerModule/outputs/* INTO $upstream",
    }
    return m


class Device:
    """A paho-mqtt client that waits for its CONNACK and records its SUBACKs and messages."""

    def __init__(self, port, client_id, user, password, v5=True):
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        self.c.username_pw_set(user, password)
        self.connected = threading.Event()
        self.subacks = {}
        self.messages = []
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.rc = None
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), f"{client_id}: no CONNACK"
        assert self.rc == 0, f"{client_id}: CONNACK {self.rc}"

    def _on_connect(self, c, u, flags, rc, props=None):
        self.rc = rc
        self.connected.set()

    def _on_subscribe(self, c, u, mid, codes, props=None):
        self.subacks[mid] = [getattr(x, "value", x) for x in codes]

    def subscribe(self, topic):
        rc, mid = self.c.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return wait_for(lambda: self.subacks.get(mid), 10, f"SUBACK for {topic}")

    def publish(self, topic, payload, qos=1):
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        return info.is_published()

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _string(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first, body):
    n, length = len(body), bytearray()
    while True:
        digit, n = n % 128, n // 128
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes([first]) + bytes(length) + body


class RawV5:
    """Just enough MQTT 5 to read the reason code of a PUBACK/PUBREC off the wire."""

    def __init__(self, port, client_id, user, password):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        # protocol name, level 5, flags: user name, password, clean start; keep-alive 30; no properties
        header = _string("MQTT") + bytes([5, 0x80 | 0x40 | 0x02]) + struct.pack("!H", 30) + b"\x00"
        self.s.sendall(_packet(0x10, header + _string(client_id) + _string(user) + _string(password)))
        kind, body = self.read()
        assert kind == 2 and body[1] == 0, f"CONNACK {body!r}"

    def _exactly(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError("the server closed the connection")
            buf += chunk
        return buf

    def read(self):
        first = self._exactly(1)[0]
        n, shift = 0, 0
        while True:
            b = self._exactly(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return first >> 4, self._exactly(n)

    def publish(self, pkid, topic, payload, qos):
        """(packet type of the answer, its packet id, its reason code)."""
        body = _string(topic) + struct.pack("!H", pkid) + b"\x00" + payload
        self.s.sendall(_packet(0x30 | (qos << 1), body))
        kind, ack = self.read()
        return kind, struct.unpack("!H", ack[:2])[0], ack[2] if len(ack) > 2 else 0

    def close(self):
        self.s.sendall(b"\xe0\x00")
        self.s.close()


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_sensor_publishes_only_under_its_own_topic(edge_dev_factory, tmp_path):
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    mosquitto_passwd(passwd, "sensor-1", "pw-one", create=True)
    mosquitto_passwd(passwd, "sensor-2", "pw-two")
    mosquitto_passwd(passwd, "display", "pw-display")
    assert passwd.read_text().startswith("sensor-1:$7$")
    acl.write_text(ACL)
    mqtt_port, metrics_port = free_port(), free_port()
    edge = edge_dev_factory(manifest(mqtt_port, metrics_port, passwd, acl)).start()
    wait_port(mqtt_port, timeout=30, proc=edge.proc)

    display = Device(mqtt_port, "bedside", "display", "pw-display")
    assert display.subscribe("sensors/#") == [1], "the display may read every sensor"

    sensor = Device(mqtt_port, "sensor-1", "sensor-1", "pw-one")
    # its own topic: acknowledged (only once edgeHub has it) and upstream
    assert sensor.publish("sensors/sensor-1/temp", b'{"temp": 37.5, "n": "own"}')
    # another sensor's topic, MQTT 5 QoS 1 and 2: refused with 0x87 Not authorized
    raw = RawV5(mqtt_port, "sensor-1-raw", "sensor-1", "pw-one")
    assert raw.publish(1, "sensors/sensor-2/temp", b'{"temp": 41, "n": "intruder-q1"}', qos=1) == (4, 1, 0x87)
    assert raw.publish(2, "sensors/sensor-2/temp", b'{"temp": 41, "n": "intruder-q2"}', qos=2) == (5, 2, 0x87)
    raw.close()
    # MQTT 3.1.1 cannot say no in a PUBACK: as Mosquitto does, it is acknowledged and dropped
    old = Device(mqtt_port, "sensor-1-old", "sensor-1", "pw-one", v5=False)
    assert old.publish("sensors/sensor-2/temp", b'{"temp": 41, "n": "intruder-311"}')
    # subscriptions outside the ACL: 0x87 (MQTT 5) and 0x80 (3.1.1)
    assert sensor.subscribe("sensors/#") == [0x87]
    assert old.subscribe("sensors/sensor-2/#") == [0x80]
    old.close()
    # a reading after the refused ones: once it is upstream, anything before it would be too
    assert sensor.publish("sensors/sensor-1/temp", b'{"temp": 37.6, "n": "marker"}')

    def upstream_names():
        return [r.get("body", {}).get("n") for r in edge.upstream() if r["module"] == "MqttServerModule"]

    names = wait_for(lambda: "marker" in upstream_names() and upstream_names(), 20,
                     lambda: "the marker upstream; edge-dev said:\n" + edge.output()[-3000:])
    assert names == ["own", "marker"], names
    own = [r for r in edge.upstream() if r.get("body", {}).get("n") == "own"][0]
    assert own["properties"]["mqtt-topic"] == "sensors/sensor-1/temp"
    assert own["properties"]["mqtt-client-id"] == "sensor-1"
    # the display got both readings of sensor-1 and none of the refused ones
    wait_for(lambda: len(display.messages) >= 2, 10, "two readings at the display")
    assert [t for t, _ in display.messages] == ["sensors/sensor-1/temp"] * 2
    assert not any(b"intruder" in p for _, p in display.messages)
    sensor.close()
    display.close()

    assert metric(metrics_port, 'mqtt_refused_total{reason="not_authorized_publish"}') == 3
    assert metric(metrics_port, 'mqtt_refused_total{reason="not_authorized_subscribe"}') == 2
    out = edge.output()
    assert "refusing a publish" in out and "add a topic/pattern line" in out, out[-3000:]
    raw_lines = [line for line in out.splitlines() if "refusing a publish" in line and "sensor-1-raw" in line]
    assert len(raw_lines) == 1, "one warning per client, not one per refusal"
    assert "panicked" not in out


def test_a_bad_acl_file_stops_the_binary_naming_the_line(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("# sensors\npattern write sensors/%c/#\ntopic wirte sensors/x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTEDGE_", "MQTT_", "EdgeHub"))}
    env.update({"MQTT_ACL_FILE": str(acl), "MQTT_PORT": str(free_port()), "MQTT_METRICS_PORT": "0",
                "MQTT_BIND_ADDRESS": "127.0.0.1"})
    # no IoT Edge identity: the ACL file is checked before the module even tries edgeHub
    r = subprocess.run([str(MQTT_SERVER)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert str(acl) in r.stderr and "line 3" in r.stderr and '"wirte" is not an access' in r.stderr, r.stderr
    assert "identity" not in r.stderr, "the ACL file is checked first"
    assert "panicked" not in r.stderr

    env["MQTT_ACL_FILE"] = str(tmp_path / "missing")
    r = subprocess.run([str(MQTT_SERVER), "--sink", "stdout"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "missing" in r.stderr and "cannot read" in r.stderr, r.stderr
