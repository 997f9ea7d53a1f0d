#!/usr/bin/env python3
"""A small device fleet for the chaos harness and the soak: N paho-mqtt (MQTT 3.1.1) devices publish QoS 1
readings at an aggregate steady rate and log every publish and every PUBACK.

Each reading's body is `{"deviceId": D, "seq": S, "temp": T, "timeCreated": ISO}`; `seq` counts the device's
readings from 0 across the whole run. The sent log has one line per event, written as it happens (line
buffered, flushed at least every 0.5 s and at exit):

    s,<device>,<seq>      the reading was handed to the client (sent, or queued while disconnected)
    a,<device>,<seq>      its PUBACK arrived: the reading is *acknowledged*

A reading is acknowledged only by its PUBACK; MqttServerModule sends that only once edgeHub stored it.
paho re-sends unacknowledged QoS 1 publishes (DUP) after a reconnect, so a reading sent before a fault can
still be acknowledged after it. While a device is disconnected its readings are skipped (a sensor drops what
it cannot send), counted in the summary but not logged, so a long outage cannot build an unbounded queue.

Stops on SIGTERM/SIGINT or after --duration; prints a JSON summary on stdout at exit."""

import argparse
import datetime as dt
import json
import random
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1 << 16)
        self.lock = threading.Lock()
        self.last_flush = time.monotonic()

    def write(self, kind, dev, seq):
        with self.lock:
            self.f.write(f"{kind},{dev},{seq}\n")
            now = time.monotonic()
            if now - self.last_flush > 0.5:
                self.f.flush()
                self.last_flush = now

    def close(self):
        with self.lock:
            self.f.flush()
            self.f.close()


class Device:
    def __init__(self, name, args, log, stats):
        self.name = name
        self.log = log
        self.stats = stats
        self.seq = 0
        self.lock = threading.Lock()
        self.by_mid = {}       # mid -> seq, for publishes awaiting PUBACK
        self.early = set()     # PUBACKs seen before publish() returned their mid
        self.connected = False
        c = mqtt.Client(client_id=name, clean_session=True, protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(args.inflight)
        c.max_queued_messages_set(args.queue)
        c.reconnect_delay_set(min_delay=1, max_delay=4)
        c.on_connect = self.on_connect
        c.on_disconnect = self.on_disconnect
        c.on_publish = self.on_publish
        self.client = c
        c.connect_async(args.host, args.port, keepalive=args.keepalive)
        c.loop_start()

    def on_connect(self, client, userdata, flags, rc):
        if rc == 0:
            self.connected = True
            self.stats["connects"] += 1

    def on_disconnect(self, client, userdata, rc):
        if self.connected:
            self.stats["disconnects"] += 1
        self.connected = False

    def on_publish(self, client, userdata, mid):
        with self.lock:
            seq = self.by_mid.pop(mid, None)
            if seq is None:
                self.early.add(mid)
                return
        self.log.write("a", self.name, seq)
        self.stats["acked"] += 1

    def publish(self):
        if not self.connected:
            self.stats["skipped"] += 1
            return
        seq = self.seq
        self.seq += 1
        body = json.dumps({"deviceId": self.name, "seq": seq, "temp": round(36.5 + random.random(), 1),
                           "timeCreated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"})
        self.log.write("s", self.name, seq)
        self.stats["sent"] += 1
        info = self.client.publish("MyTopic", body, qos=1)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.stats["queue_full"] += 1
            return
        with self.lock:
            if info.mid in self.early:
                self.early.discard(info.mid)
                acked = True
            else:
                self.by_mid[info.mid] = seq
                acked = False
        if acked:
            self.log.write("a", self.name, seq)
            self.stats["acked"] += 1

    def stop(self):
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--rate", type=float, default=50.0, help="aggregate readings per second")
    p.add_argument("--duration", type=float, default=0, help="seconds; 0 = until SIGTERM")
    p.add_argument("--sent-log", required=True)
    p.add_argument("--prefix", default="chaos")
    p.add_argument("--keepalive", type=int, default=10)
    p.add_argument("--inflight", type=int, default=100)
    p.add_argument("--queue", type=int, default=1000)
    p.add_argument("--stats-every", type=float, default=0, help="print a stats line to stderr every N s")
    args = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    log = Log(args.sent_log)
    stats = {"sent": 0, "acked": 0, "skipped": 0, "queue_full": 0, "connects": 0, "disconnects": 0}
    devices = [Device(f"{args.prefix}-{i:04d}", args, log, stats) for i in range(args.devices)]
    started = time.monotonic()
    interval = 1.0 / args.rate
    next_at = started
    i = 0
    last_stats = started
    while not stop.is_set():
        now = time.monotonic()
        if args.duration and now - started >= args.duration:
            break
        if now < next_at:
            stop.wait(min(next_at - now, 0.05))
            continue
        # catch up at most 1 s of backlog (a stalled process must not burst)
        if now - next_at > 1.0:
            next_at = now
        devices[i % len(devices)].publish()
        i += 1
        next_at += interval
        if args.stats_every and now - last_stats >= args.stats_every:
            last_stats = now
            print(json.dumps({"t": round(now - started, 1), **stats}), file=sys.stderr, flush=True)
    # give in-flight publishes a moment to be acknowledged
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(d.by_mid for d in devices if d.connected):
        time.sleep(0.05)
    for d in devices:
        d.stop()
    log.close()
    print(json.dumps({"elapsed": round(time.monotonic() - started, 1), **stats}), flush=True)


if __name__ == "__main__":
    main()
