"""`cui completion SHELL`: the scripts load in the real shells and complete cui's commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CUI = str(Path(sys.executable).with_name("cui"))


def _script(shell: str) -> str:
    out = subprocess.run([CUI, "completion", shell], capture_output=True, text=True, check=True)
    return out.stdout


def test_bash_script_completes_subcommands_in_real_bash(tmp_path: Path) -> None:
    script = tmp_path / "cui.bash"
    script.write_text(_script("bash"))
    probe = (
        f"source {script}; PATH={Path(CUI).parent}:$PATH; "
        'COMP_WORDS=(cui ut); COMP_CWORD=1; _cui_completion cui; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["utility"]


def test_bash_completes_a_nested_command() -> None:
    env = dict(os.environ, COMP_WORDS="cui utility token re", COMP_CWORD="3")
    env["_CUI_COMPLETE"] = "bash_complete"
    out = subprocess.run([CUI], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["plain,revoke"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_parse_in_their_shells(shell: str, tmp_path: Path) -> None:
    binary = shutil.which(shell)
    assert binary, f"{shell} is installed by scripts/setup"
    script = tmp_path / f"cui.{shell}"
    script.write_text(_script(shell))
    subprocess.run([binary, "-n", str(script)], check=True)
    assert "_CUI_COMPLETE" in script.read_text()


def test_unknown_shell_is_a_usage_error() -> None:
    out = subprocess.run([CUI, "completion", "tcsh"], capture_output=True, text=True)
    assert out.returncode == 2 and "tcsh" in out.stderr
