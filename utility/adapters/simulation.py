"""Simulated clusters for tests, benchmarks and demos: `test:` driver hosts and sample appliances.

A `test:///PATH.xml` URI gives each libvirt connection a private, in-memory host whose size
the node XML sets; the cluster manager keeps its connections open, so such a host lives as long
as the daemon. The appliance helpers write a publisher's domain XML and a small qcow2 program
disk next to each of the paper's example CVL files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from utility.core.xml_nodes import el, render

VM_FILES = {"DNS": "dns.vmx", "OpenLDAP": "ldap.vmx", "Firewall": "fw.vmx"}


def simulated_host_uri(directory: Path, name: str, memory_mib: int = 4096, cpus: int = 2) -> str:
    """Write a test-driver node description and return its private-instance URI."""
    node = el(
        "node",
        {},
        [
            el(
                "cpu",
                {},
                [
                    el("nodes", text=1),
                    el("sockets", text=1),
                    el("cores", text=cpus),
                    el("threads", text=1),
                    el("mhz", text=2000),
                    el("model", text="x86_64"),
                ],
            ),
            el("memory", text=memory_mib * 1024),
        ],
    )
    path = directory / f"{name}.xml"
    path.write_text(render(node))
    return f"test://{path}"


def publisher_domain_xml(name: str, memory_mib: int, disk: str | None = "system.qcow2") -> str:
    """A publisher's domain XML: memory, one vCPU, one program disk on vda."""
    devices = []
    if disk:
        devices.append(
            el(
                "disk",
                {"type": "file", "device": "disk"},
                [el("source", {"file": disk}), el("target", {"dev": "vda", "bus": "virtio"})],
            )
        )
    return render(
        el(
            "domain",
            {"type": "qemu"},
            [
                el("name", text=name),
                el("memory", {"unit": "MiB"}, text=memory_mib),
                el("vcpu", text=1),
                el("os", {}, [el("type", {"arch": "x86_64"}, text="hvm")]),
                el("devices", {}, devices),
            ],
        )
    )


def base_image(path: Path, size: str = "16M") -> None:
    """A small empty qcow2 program disk."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)


def paper_tree(source: Path, dest: Path, memory_mib: int = 64) -> Path:
    """Copy the paper's example appliances (`examples/paper`) to `dest`, add VM files and disks.

    Returns:
        the path of the user's CVL file, `dest/AcmeGroupware.cvl`.
    """
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("_tmp*", "*.qcow2", "*.vmx"))
    for appliance, vm_file in VM_FILES.items():
        directory = dest / appliance
        (directory / vm_file).write_text(publisher_domain_xml(appliance.lower(), memory_mib))
        base_image(directory / "system.qcow2")
    return dest / "AcmeGroupware.cvl"
