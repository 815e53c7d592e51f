"""Simulated clusters for tests, benchmarks and demos: `test:` driver hosts and sample appliances.

A `test:///PATH.xml` URI gives each libvirt connection a private, in-memory host whose size
the node XML sets; the cluster manager keeps its connections open, so such a host lives as long
as the daemon. A *persistent* simulated host (`persistent=True`) outlives the daemon like a real
libvirtd does: its bare node description is kept beside it (`PATH.base.xml`), and after each
change the wrapper (`libvirt_host`) rewrites `PATH.xml` as that node plus the active domains
and networks, which the test driver loads again at the next connection (kill tests need the
domains a SIGKILLed daemon leaves behind). The appliance helpers write a publisher's domain
XML and a small qcow2 program disk next to each of the paper's example CVL files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from utility.core.xml_nodes import el, render

VM_FILES = {"DNS": "dns.vmx", "OpenLDAP": "ldap.vmx", "Firewall": "fw.vmx"}


def simulated_host_uri(
    directory: Path, name: str, memory_mib: int = 4096, cpus: int = 2, persistent: bool = False
) -> str:
    """Write a test-driver node description and return its private-instance URI (a host that
    keeps its domains across daemon restarts with `persistent`, see the module docstring)."""
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
    if persistent:
        path.with_suffix(BASE_SUFFIX).write_text(render(node))
    return f"test://{path}"


BASE_SUFFIX = ".base.xml"
_saving = threading.Lock()


def persisted_node(uri: str) -> Path | None:
    """The node file a persistent simulated host at `uri` is saved to, else None."""
    if not uri.startswith("test:///"):
        return None
    path = Path(uri[len("test://") :])
    return path if path.suffix == ".xml" and path.with_suffix(BASE_SUFFIX).is_file() else None


def save_simulated_host(conn: Any, path: Path) -> None:
    """Rewrite node file `path` as its bare node plus the active domains and networks of the
    open test-driver connection `conn` (atomically: a crash leaves the previous snapshot)."""
    with _saving:
        items = [d.XMLDesc(0) for d in conn.listAllDomains() if d.isActive()]
        items += [n.XMLDesc(0) for n in conn.listAllNetworks() if n.isActive()]
        node = path.with_suffix(BASE_SUFFIX).read_text().strip()
        assert node.endswith("</node>"), f"{path}: not a test-driver node description"
        text = node[: -len("</node>")] + "\n".join(items) + "</node>\n"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


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
