#!/usr/bin/env python3
"""Records what real MQTT clients send, as seeds for the MQTT fuzz targets.

Runs Debian's mosquitto broker on a loopback port behind a recording proxy, runs
mosquitto_pub / mosquitto_sub sessions (MQTT 3.1.1 and 5: QoS 0/1/2, retain, wills, MQTT 5
properties, subscribe/unsubscribe, login) through it, and writes each session's client bytes as
seeds: fuzz/corpus/mqtt_decode/<name> (a mode byte 0, then the bytes) and
fuzz/corpus/mqtt_session/<name> (records of the session input format, see mqtt_session.rs).

Usage: python3 fuzz/tools/capture_mqtt.py   (needs mosquitto and mosquitto-clients)
"""
import os
import socket
import struct
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")
BROKER, PROXY = 18891, 18890


def pump(src, dst, log):
    while True:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        if not data:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        if log is not None:
            log.append(data)
        dst.sendall(data)


def proxy(sessions, stop):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PROXY))
    srv.listen(16)
    srv.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        b = socket.create_connection(("127.0.0.1", BROKER))
        chunks = []
        sessions.append(chunks)
        threading.Thread(target=pump, args=(c, b, chunks), daemon=True).start()
        threading.Thread(target=pump, args=(b, c, None), daemon=True).start()
    srv.close()


def run(cmd):
    subprocess.run(cmd, check=False, timeout=20, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def record(sessions, name, devices, mode=0):
    """Writes the sessions captured since `devices` were started as seeds."""
    decode_dir = os.path.join(CORPUS, "mqtt_decode")
    session_dir = os.path.join(CORPUS, "mqtt_session")
    os.makedirs(decode_dir, exist_ok=True)
    os.makedirs(session_dir, exist_ok=True)
    recs = bytearray([mode | ((len(devices) - 1) << 1)])
    for d, chunks in enumerate(devices):
        data = b"".join(chunks)
        with open(os.path.join(decode_dir, f"{name}-{d}"), "wb") as f:
            f.write(bytes([0]) + data)
        for i, c in enumerate(chunks):
            # with several devices the first waits (0.8 s) after its first two packets (CONNECT,
            # SUBSCRIBE), so that the others' publishes reach it before it acknowledges and leaves
            pause = 4 if d == 0 and len(devices) > 1 and i >= 2 else 0
            recs += bytes([(pause << 2) | d]) + struct.pack("<H", len(c)) + c
    with open(os.path.join(session_dir, name), "wb") as f:
        f.write(bytes(recs))


def main():
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-p", str(BROKER)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    sessions, stop = [], threading.Event()
    t = threading.Thread(target=proxy, args=(sessions, stop), daemon=True)
    t.start()
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(PROXY)]
    sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(PROXY)]
    reading = '{"temp": 38.2, "timeCreated": "2026-11-24T08:00:10Z"}'
    try:
        for name, cmd in [
            ("v4-qos0", pub + ["-i", "bed-7", "-t", "MyTopic", "-m", reading]),
            ("v4-qos1-retain", pub + ["-i", "bed-7", "-q", "1", "-r", "-t", "MyTopic", "-m", reading]),
            ("v4-qos2", pub + ["-i", "bed-7", "-q", "2", "-t", "MyTopic", "-m", reading]),
            ("v4-will-login", pub + ["-i", "bed-8", "-q", "1", "-u", "sensor-1", "-P", "s3cret",
                                     "--will-topic", "status/bed-8", "--will-payload", "gone",
                                     "--will-qos", "1", "--will-retain", "-t", "MyTopic", "-m", reading]),
            ("v5-qos1-props", pub + ["-V", "5", "-i", "bed-9", "-q", "1", "-t", "MyTopic", "-m", reading,
                                     "-D", "publish", "user-property", "unit", "C",
                                     "-D", "publish", "content-type", "application/json",
                                     "-D", "publish", "correlation-data", "req-1",
                                     "-D", "publish", "response-topic", "replies/bed-9",
                                     "-D", "publish", "message-expiry-interval", "60",
                                     "-D", "connect", "session-expiry-interval", "3600"]),
            ("v5-qos2", pub + ["-V", "5", "-i", "bed-9", "-q", "2", "-t", "sensors/9/temp", "-m", "37.1"]),
            ("v4-sub", sub + ["-i", "dash", "-q", "1", "-t", "MyTopic", "-t", "sensors/+/temp", "-C", "1", "-W", "2"]),
            ("v5-sub-unsub", sub + ["-V", "5", "-i", "dash5", "-q", "2", "-t", "#", "-U", "old/#",
                                   "-D", "subscribe", "subscription-identifier", "7", "-C", "1", "-W", "2"]),
        ]:
            before = len(sessions)
            run(cmd)
            time.sleep(0.3)
            record(sessions, name, sessions[before:])
        # two devices: one subscribes, the other publishes what it receives
        before = len(sessions)
        s = subprocess.Popen(sub + ["-i", "dash", "-q", "1", "-t", "MyTopic", "-C", "1", "-W", "3"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        run(pub + ["-i", "bed-7", "-q", "1", "-t", "MyTopic", "-m", reading])
        s.wait(timeout=10)
        time.sleep(0.3)
        record(sessions, "sub-and-pub", sessions[before:])
    finally:
        stop.set()
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
