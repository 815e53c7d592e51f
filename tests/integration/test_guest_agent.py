"""The guest agent's hook library (examples/appliances/agent/lib.sh) run by busybox sh on the host.

These are the functions every appliance's hooks call; running them here with the same busybox
the images carry catches a broken helper in seconds instead of a VM boot.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "examples" / "appliances" / "agent"

pytestmark = pytest.mark.skipif(
    shutil.which("busybox") is None, reason="busybox (the guest's shell) is not installed"
)


def sh(
    script: str, tmp: Path, params: dict[str, list[str]] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `script` after loading lib.sh with its state directories moved under `tmp`."""
    pdir = tmp / "params"
    pdir.mkdir(exist_ok=True)
    for key, values in (params or {}).items():
        (pdir / key).write_text("".join(v + "\n" for v in values))
    prelude = f". {AGENT / 'lib.sh'}\nRUN={tmp}; PARAMS={pdir}; SVC={tmp / 'svc'}\n"
    # map_get uses the decoder at its in-image path; point it at the source tree.
    decoder = AGENT / "mapdecode.awk"
    prelude += f'map_get() {{ printf "%s\\n" "$1" | awk -v key="$2" -f {decoder} | head -n 1; }}\n'
    return subprocess.run(
        ["busybox", "sh", "-c", prelude + script], capture_output=True, text=True, timeout=30
    )


def test_render_substitutes_parameters_and_writes_atomically(tmp_path: Path) -> None:
    template = tmp_path / "t.tmpl"
    template.write_text("domain={{domain}}\nfirst={{forwarders}} & {{domain}}|\nplain line\n")
    out = tmp_path / "out.conf"
    proc = sh(
        f"render {template} {out}",
        tmp_path,
        {"domain": ["acme.org"], "forwarders": ["10.0.0.1", "10.0.0.2"]},
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "domain=acme.org\nfirst=10.0.0.1 & acme.org|\nplain line\n"


def test_render_names_a_missing_parameter_and_keeps_the_old_output(tmp_path: Path) -> None:
    template = tmp_path / "t.tmpl"
    template.write_text("a={{domain}}\nb={{rootdn}}\n")
    out = tmp_path / "out.conf"
    out.write_text("previous\n")
    proc = sh(f"render {template} {out}", tmp_path, {"domain": ["acme.org"]})
    assert proc.returncode != 0
    assert "t.tmpl:2: parameter rootdn is not set" in proc.stderr
    assert out.read_text() == "previous\n"


def test_param_helpers(tmp_path: Path) -> None:
    proc = sh(
        'param forwarders; param_all forwarders; param missing; echo "[$(param missing)]"\n'
        "has_param domain && echo has; has_param missing || echo hasnt\n"
        "port_number port 80; port_number dnsport 53; prefix_of 255.255.255.0;"
        " prefix_of 255.255.0.0\n"
        'map_get "name=l&ip=10%2E0%2E1%2E3" ip; map_get "name=l" ip; echo end\n',
        tmp_path,
        {"forwarders": ["a", "b"], "domain": [""], "port": ["8080/tcp"]},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n") == [
        "a",
        "a",
        "b",
        "[]",
        "has",
        "hasnt",
        "8080",
        "53",
        "24",
        "16",
        "10.0.1.3",
        "end",
        "",
    ]


def test_require_param_fails_naming_the_first_missing_one(tmp_path: Path) -> None:
    proc = sh(
        "require_param domain dnshosts forwarders; echo unreachable",
        tmp_path,
        {"domain": ["acme.org"]},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "required parameter dnshosts is not set"
    assert "unreachable" not in proc.stdout


def test_daemon_and_stop_daemons_stop_exactly_the_service(tmp_path: Path) -> None:
    proc = sh(
        "daemon sleeper sleep 300; pid=$(cat $SVC/sleeper.pid); kill -0 $pid && echo up\n"
        "sleep 600 & other=$!\n"
        "stop_daemons; kill -0 $pid 2>/dev/null || echo stopped\n"
        "kill -0 $other && echo other-alive; kill $other\n"
        "ls $SVC | wc -l\n",
        tmp_path,
    )
    # `daemon` sends output to /dev/console; on the host that may not be writable, so only the
    # bookkeeping is checked when it is not.
    if "can't create /dev/console" in proc.stderr or "Permission denied" in proc.stderr:
        pytest.skip("no writable /dev/console on this host")
    assert proc.stdout.split() == ["up", "stopped", "other-alive", "0"], proc.stderr
