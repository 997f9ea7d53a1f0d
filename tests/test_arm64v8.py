"""arm64v8 (Raspberry Pi with 64-bit Raspberry Pi OS) on this amd64 machine, built like arm32v7 (see
test_arm32v7.py): Debian's rustc-web with its arm64 standard library and gcc-aarch64-linux-gnu
(scripts/install-image-deps.sh --arm64v8, scripts/build-cross.sh --platform arm64v8), the linux/arm64 images
made from those binaries (FROM scratch, well under 20 MB), and the seed pipeline run from them by
`edge-dev up --docker --platform arm64v8` under qemu through binfmt (reported as skipped, with the reason,
where the kernel refuses binfmt or no Docker engine exists)."""

import pytest

from test_arm32v7 import REPO, docker_pipeline, run

TARGET_DIR = REPO / "target" / "arm64v8"


@pytest.fixture(scope="session")
def arm64_toolchain():
    run(["scripts/install-image-deps.sh", "--arm64v8"], timeout=1200)


def test_up_docker_runs_the_seed_pipeline_from_the_arm64v8_images(arm64_toolchain, tmp_path):
    docker_pipeline("arm64v8", "linux/arm64", tmp_path, env={"CARGO_TARGET_DIR": str(TARGET_DIR)})
