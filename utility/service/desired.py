"""From an evaluated model to a desired `VapState`: pre-start checks, names, and state building.

Pure except for reading each VM appliance's domain XML through `ApplianceFiles` (`prepare`).
`utility.service.pipeline` calls, in order: `prepare`, `static_problems`, then (after the
allocator's proposal and the address-filled re-evaluation) `build_state`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from common.publisher_xml import PublisherXmlError, VmSpec, parse_vm_spec
from utility.adapters import cvl_adapter
from utility.adapters.appliance_files import ApplianceFiles, files_for
from utility.adapters.signed_release import SignedRelease
from utility.core import overlay
from utility.core.addresses import PUBLIC, Addressing
from utility.core.dependencies import Services, boot_needs
from utility.core.desired_state import Disk, Interface, Network, VapState, Vm
from utility.core.model_view import ModelView, leaf_name
from utility.core.placement import VmDemand
from utility.core.sizes import parse_size
from utility.errors import ApplianceError, UtilityError

SOCKET_PATH_MAX = 100


@dataclass(frozen=True)
class Settings:
    """Cluster-wide naming and addressing choices."""

    prefix: str = "col"
    address_base: str = "10.0.0.0/8"
    placement: str = "spread"

    def __post_init__(self) -> None:
        if not (1 <= len(self.prefix) <= 6 and self.prefix.replace("-", "").isalnum()):
            raise UtilityError(
                f"name prefix {self.prefix!r}: 1-6 letters/digits (bridge names are ≤ 15)"
            )


@dataclass(frozen=True)
class Prepared:
    """A VM appliance's image description, read before anything is allocated."""

    path: str
    spec: VmSpec
    files: ApplianceFiles
    data_disks: tuple[tuple[str, int], ...]


def prepare(
    model: ModelView,
    source: cvl_adapter.Source,
    releases: Callable[[str, str], SignedRelease | None] | None = None,
) -> tuple[dict[str, Prepared], list[str]]:
    """Read each VM appliance's domain XML and data disk list; collect problems, not raise.

    `releases(url, version)` gives the verified signed release a repository version's files
    are checked against (None where trust policy requires no signature).
    """
    prepared: dict[str, Prepared] = {}
    problems: list[str] = []
    for vm in model.vms():
        vm_file = vm.first("vm")
        if vm_file is None:
            continue  # reported as a missing required parameter
        try:
            release = releases(vm.origin.url, vm.origin.version) if releases and vm.origin else None
            files = files_for(vm.origin, source.bundle, source.local_files, release)
            spec = parse_vm_spec(files.read(vm_file), f"{files.label}: {vm_file}")
            data = tuple(_data_disks(vm.path, vm.value("datadisks")))
            program = {d.target for d in spec.disks}
            for device, _ in data:
                program.discard(device)
            prepared[vm.path] = Prepared(path=vm.path, spec=spec, files=files, data_disks=data)
        except (ApplianceError, PublisherXmlError, UtilityError) as exc:
            problems.append(f"{vm.path}: {exc}")
    return prepared, problems


def _data_disks(path: str, values: Iterable[str]) -> Iterable[tuple[str, int]]:
    for value in values:
        pairs = dict(cvl_adapter.decode_map(value))
        if "device" not in pairs or "size" not in pairs:
            raise ApplianceError(f"{path}.datadisks: {value!r} needs device and size")
        size = parse_size(pairs["size"], f"{path}.datadisks size")
        yield disk_target(path, pairs["device"]), size


def disk_target(path: str, device: str) -> str:
    """A libvirt target name for a data disk device: `vdb` as is, VMware-style `ide0:1` -> `hdb`.

    IDE controller c, unit u is drive letter 2c+u (hda, hdb, hdc, hdd); `scsiC:U` -> `sd` + the
    letter of unit U (controller 0 only).
    """
    if re.fullmatch(r"[vsh]d[a-z]{1,2}", device):
        return device
    match = re.fullmatch(r"(ide|scsi)(\d):(\d+)", device)
    if match:
        bus, controller, unit = match.group(1), int(match.group(2)), int(match.group(3))
        if bus == "ide" and controller <= 1 and unit <= 1:
            return "hd" + "abcd"[2 * controller + unit]
        if bus == "scsi" and controller == 0 and unit < 26:
            return "sd" + "abcdefghijklmnopqrstuvwxyz"[unit]
    raise ApplianceError(
        f"{path}.datadisks: device {device!r} is not a disk name (vdb, sdb, hdb, ide0:1, scsi0:1)"
    )


def static_problems(
    model: ModelView,
    blacklist: Iterable[tuple[str, str]],
) -> list[str]:
    """Checks that need no allocation: required parameters, requires provided, blacklist."""
    problems: list[str] = []
    pending = set(model.pending)
    for path in sorted(model.components):
        component = model.components[path]
        for name in component.required:
            key = f"{path}.{name}" if path else name
            if name not in component.params and key not in pending:
                where = f"{path} ({component.type})" if path else f"(root) ({component.type})"
                problems.append(f"{where}: required parameter {name!r} has no value")
    _, dep_problems = boot_needs(services_of(model))
    problems.extend(dep_problems)
    banned = {(url.rstrip("/"), version) for url, version in blacklist}
    seen: set[tuple[str, str]] = set()
    origins = [c.origin for c in model.components.values() if c.origin]
    pairs = [(o.url, o.version) for o in origins]
    pairs += [(str(i["url"]), str(i.get("version"))) for i in model.imports if i.get("url")]
    for url, version in pairs:
        entry = (url.rstrip("/"), version)
        if entry in seen:
            continue
        seen.add(entry)
        if entry in banned or (entry[0], "all") in banned:
            problems.append(f"{url} version {version} is blacklisted by the administrator")
    return problems


def services_of(model: ModelView) -> dict[str, Services]:
    """provides/requires of every VM appliance."""
    return {
        vm.path: Services(provides=vm.value("provides"), requires=vm.value("requires"))
        for vm in model.vms()
    }


def demands(prepared: Mapping[str, Prepared]) -> list[VmDemand]:
    """Memory each VM needs, for placement."""
    return [VmDemand(path, p.spec.memory) for path, p in sorted(prepared.items())]


def component_names(model: ModelView) -> dict[str, str]:
    """The `name` of every VM and VAN: its path with dashes (a valid hostname), root: the type."""
    names = {}
    for path, c in model.components.items():
        if c.kind in ("vm", "van"):
            names[path] = path.replace(".", "-") if path else c.type.lower()
    return names


def domain_name(settings: Settings, vap_id: int, vm_path: str) -> str:
    """libvirt domain name of a VM: `<prefix>-<VAP id>-<path>` (`root` for a root VM)."""
    return f"{settings.prefix}-{vap_id}-{vm_path or 'root'}"


def network_name(settings: Settings, segment: str, vlans: Mapping[str, int], vap_id: int) -> str:
    """libvirt network and bridge name of a segment: `<prefix>-v<vlan>`, public `<prefix>-x<id>`."""
    if segment == PUBLIC:
        return f"{settings.prefix}-x{vap_id}"
    return f"{settings.prefix}-v{vlans[segment]}"


def build_state(
    *,
    vap_id: int,
    name: str,
    vap_dir: Path,
    model: ModelView,
    prepared: Mapping[str, Prepared],
    addressing: Addressing,
    placement: Mapping[str, str],
    bases: Mapping[tuple[str, str], str],
    secrets: Mapping[str, str],
    settings: Settings,
    run_dir: Path,
    underlays: Mapping[str, str | None] | None = None,
) -> VapState:
    """The desired state of a VAP from its final (address-filled) model and its allocations.

    Args:
        underlays: host -> its underlay address: a VAN segment's network on such a host gets a
            VXLAN port, and its interfaces the segment MTU (`utility.core.overlay`).
        name: the VAP's name (`owner/short name`).
        vap_dir: the utility's storage of this VAP (`bundles.vap_dir`): VM directories go there.
        bases: (VM path, disk target) -> local path of the program disk's top image.
        secrets: sensitive override key -> value (kept only in memory; masked when stored).
        run_dir: where guest sockets go when the VM directory's path is too long for a socket.
    """
    needs, _ = boot_needs(services_of(model))
    secret_values = {v for v in secrets.values() if v}
    vms = []
    networks: dict[tuple[str, str], Network] = {}
    for vm in model.vms():
        prep = prepared[vm.path]
        host = placement[vm.path]
        slug = vm.path or "root"  # a CVL file whose root is itself a VM appliance
        vm_dir = vap_dir / slug
        domain = domain_name(settings, vap_id, vm.path)
        socket = vm_dir / "guest.sock"
        if len(str(socket)) > SOCKET_PATH_MAX:
            socket = run_dir / f"{domain}.sock"
        interfaces = []
        params: dict[str, tuple[str, ...]] = dict(vm.params)
        sensitive = set(vm.sensitive)
        for iface in model.interfaces(vm.path):
            address = addressing.interfaces[iface.path]
            name = leaf_name(iface.path)
            net = network_name(settings, address.segment, addressing.vlans, vap_id)
            vlan = addressing.vlans.get(address.segment)
            underlay = (underlays or {}).get(host) if vlan is not None else None
            networks.setdefault(
                (net, host),
                Network(
                    name=net,
                    bridge=net,
                    host=host,
                    segment=address.segment,
                    vlan=vlan,
                    underlay=underlay,
                ),
            )
            interfaces.append(
                Interface(
                    name=name,
                    mac=address.mac,
                    ip=address.ip,
                    netmask=address.netmask,
                    network=net,
                    segment=address.segment,
                    mtu=overlay.segment_mtu(underlay),
                )
            )
            for key, values in iface.params.items():
                params[f"{name}.{key}"] = values
            sensitive.update(f"{name}.{key}" for key in iface.sensitive)
        disks = [
            Disk(
                target=d.target,
                path=str(vm_dir / f"{d.target}.qcow2"),
                role="program",
                base=bases[(vm.path, d.target)],
            )
            for d in prep.spec.disks
            if d.target not in {dev for dev, _ in prep.data_disks}
        ]
        disks += [
            Disk(target=dev, path=str(vm_dir / f"data-{dev}.qcow2"), role="data", size=size)
            for dev, size in prep.data_disks
        ]
        sensitive.update(k for k, vals in params.items() if any(v in secret_values for v in vals))
        os = {
            k: bases.get((vm.path, f"os:{k}"), "")
            for k in ("kernel", "initrd")
            if getattr(prep.spec, k)
        }
        if prep.spec.cmdline:
            os["cmdline"] = prep.spec.cmdline
        if prep.spec.machine:
            os["machine"] = prep.spec.machine
        if prep.spec.acpi:
            os["acpi"] = "on"
        vms.append(
            Vm(
                path=vm.path,
                type=vm.type,
                origin=(
                    {
                        "name": vm.origin.name,
                        "url": vm.origin.url,
                        "cvl": vm.origin.cvl,
                        "version": vm.origin.version,
                    }
                    if vm.origin
                    else None
                ),
                host=host,
                domain=domain,
                memory=prep.spec.memory,
                vcpus=prep.spec.vcpus,
                vm_dir=str(vm_dir),
                guest_socket=str(socket),
                disks=tuple(disks),
                interfaces=tuple(interfaces),
                params=tuple(sorted(params.items())),
                sensitive=tuple(sorted(sensitive)),
                provides=vm.value("provides"),
                requires=vm.value("requires"),
                needs=needs.get(vm.path, ()),
                os=os,
            )
        )
    return VapState(
        cvl_path=name,
        appliance=model.appliance,
        vlans=dict(addressing.vlans),
        vms=tuple(vms),
        networks=tuple(sorted(networks.values(), key=lambda n: (n.host, n.name))),
        imports=tuple(dict(i) for i in model.imports),
    )
