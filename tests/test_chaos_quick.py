"""The chaos harness's quick mode (tests/chaos/run.py --quick): every fault scenario once, short, against the
binaries the other end-to-end tests use (EDGE_DEV_BIN_DIR). kill -9 of each module and of the runtime, an
upstream outage with a runtime restart, a full disk (tmpfs, root), a device network cut (a proxy that
black-holes every connection) and clock steps of +/-1 h (libfaketime). It passes when no acknowledged reading
is missing upstream in any scenario and every scenario ran. About 3-4 minutes; the table is printed (-s)."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import BIN_DIR, REPO

HARNESS = REPO / "tests" / "chaos" / "run.py"
LIBFAKETIME = pathlib.Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def test_chaos_quick_no_acknowledged_reading_is_lost(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the disk-full scenario mounts a tmpfs: needs root (CI runs as root)")
    for b in ("edge-dev", "mqtt-server", "aggregator"):
        if not (BIN_DIR / b).exists():
            pytest.fail(f"{BIN_DIR / b} is missing: build with `cargo build --workspace --bins`")
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing: apt-get install libfaketime (scripts/install-test-deps.sh)")
    out = tmp_path / "chaos.json"
    r = subprocess.run([sys.executable, str(HARNESS), "--quick", "--bin-dir", str(BIN_DIR), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    print(r.stdout[-6000:])
    assert r.returncode == 0, f"chaos --quick failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
