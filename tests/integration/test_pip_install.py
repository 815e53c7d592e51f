"""pip in a clean venv: publishers and CVL users install without libvirt or a C toolchain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.slow
@pytest.mark.conformance("pip", "install collective (no extras) in a clean venv, no C compiler")
def test_plain_install_needs_no_libvirt_and_says_which_extra(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CC": "false", "CXX": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", str(ROOT)], check=True, env=env, timeout=600
    )
    probe = subprocess.run([venv / "bin" / "python", "-c", "import libvirt"], capture_output=True)
    assert probe.returncode != 0, "libvirt-python must not come with the plain install"
    cui = str(venv / "bin" / "cui")
    ok = subprocess.run(
        [cui, "check", str(ROOT / "examples" / "paper" / "AcmeGroupware.cvl")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    serve = subprocess.run(
        [cui, "utility", "serve", "--state", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 1
    assert "pip install 'collective[utility]'" in serve.stderr
