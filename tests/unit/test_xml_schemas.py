"""Generated libvirt XML validates against libvirt's own schemas (`virt-xml-validate`).

The golden files are exactly what the utility's builders produce (tests/unit/test_utility_xml.py
compares them byte for byte), so validating them validates the builders' output. Publisher
domain XML in examples/appliances is a template: its `<source file>` names are files of the
repository version, relative, and the utility makes them absolute at start; with that done it
must validate too.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
GOLDEN = sorted((ROOT / "tests" / "unit" / "golden" / "utility").glob("*.xml"))
PUBLISHER = sorted((ROOT / "examples" / "appliances").glob("*/*.xml"))


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virt-xml-validate", str(path)], capture_output=True, text=True)


@pytest.mark.conformance("virt-xml-validate", "generated {name}")
@pytest.mark.parametrize("name", [p.name for p in GOLDEN])
def test_generated_xml_validates(name: str) -> None:
    done = validate(ROOT / "tests" / "unit" / "golden" / "utility" / name)
    assert done.returncode == 0, done.stderr


def _filled_in(template: Path, into: Path) -> Path:
    tree = ET.parse(template)
    for source in tree.iter("source"):
        name = source.get("file")
        if name is not None and not name.startswith("/"):
            source.set("file", f"/var/lib/collective/vaps/1/{name}")
    out = into / template.name
    tree.write(out)
    return out


@pytest.mark.conformance("virt-xml-validate", "publisher template {name}, disk paths filled in")
@pytest.mark.parametrize("name", [f"{p.parent.name}/{p.name}" for p in PUBLISHER])
def test_publisher_templates_validate_once_filled_in(name: str, tmp_path: Path) -> None:
    template = ROOT / "examples" / "appliances" / name
    assert validate(template).returncode != 0, "templates name disks relative to the version"
    done = validate(_filled_in(template, tmp_path))
    assert done.returncode == 0, done.stderr


def test_the_validator_refuses_an_invalid_domain(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='qemu'><name>x</name><memory>nope</memory></domain>")
    assert validate(bad).returncode != 0


@pytest.mark.conformance("virt-xml-validate", "generated network with a VLAN tag (vlan {vlan})")
@pytest.mark.parametrize("vlan", [1, 4094])
def test_generated_network_with_a_vlan_validates(vlan: int, tmp_path: Path) -> None:
    from utility.core.network_xml import NetworkXml

    path = tmp_path / "net.xml"
    path.write_text(NetworkXml(f"col-v{vlan}", f"col-v{vlan}", vlan).to_xml())
    done = validate(path)
    assert done.returncode == 0, done.stderr
