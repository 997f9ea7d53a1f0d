#!/usr/bin/env python3
"""Rewrites the platform (architecture, variant) in the config of a `docker save` archive, so an image that
Docker's classic builder made FROM scratch on amd64 (which always records the builder's own platform) says
linux/arm/v7 or linux/arm64 as it must for a registry and a Raspberry Pi. Layers are not touched.
Usage: docker save IMG | set-image-platform.py ARCH [VARIANT] | docker load"""
import hashlib
import io
import json
import sys
import tarfile


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    arch = sys.argv[1]
    variant = sys.argv[2] if len(sys.argv) > 2 else None
    src = tarfile.open(fileobj=sys.stdin.buffer, mode="r|")
    members = []
    for m in src:
        data = src.extractfile(m).read() if m.isfile() else None
        members.append((m, data))
    files = {m.name: d for m, d in members}
    manifest = json.loads(files["manifest.json"])
    renames = {}
    for entry in manifest:
        old = entry["Config"]
        cfg = json.loads(files[old])
        cfg["architecture"] = arch
        if variant:
            cfg["variant"] = variant
        else:
            cfg.pop("variant", None)
        raw = json.dumps(cfg, separators=(",", ":")).encode()
        new = hashlib.sha256(raw).hexdigest() + ".json"
        renames[old] = (new, raw)
        entry["Config"] = new
    out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|")
    for m, data in members:
        if m.name in renames:
            new, raw = renames[m.name]
            m = tarfile.TarInfo(new)
            m.size = len(raw)
            m.mode = 0o644
            data = raw
        elif m.name == "manifest.json":
            data = json.dumps(manifest).encode()
            m.size = len(data)
        out.addfile(m, io.BytesIO(data) if data is not None else None)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
