"""The wheel carries kernels/ and configs/, and an installed copy finds them without the source checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True)
    return next(out.glob("flexq-*.whl"))


def test_wheel_contains_kernels_configs_and_the_entry_point(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    cu = sorted(p.name for p in (REPO / "kernels").glob("*.cu"))
    assert cu and all(f"flexq_cli/_data/kernels/{name}" in names for name in cu)
    assert "flexq_cli/_data/configs/presets/w6a8.yaml" in names and "flexq_cli/_data/configs/models.yaml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "flexq = flexq_cli.cli.main:run" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_copy_reads_its_own_data(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from flexq_cli.resources import kernels_dir, configs_dir, kernel_source; "
            "from flexq_cli.config import load_preset; "
            "print(kernels_dir()); print(configs_dir()); print(load_preset('flexq').act_bits)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    kernels, configs, bits = run.stdout.split()
    assert kernels == str(site / "flexq_cli" / "_data" / "kernels")
    assert configs == str(site / "flexq_cli" / "_data" / "configs") and bits == "6"
