"""CVL benchmarks: the paper's Groupware example, and generated VANs of 100 to 10,000 VMs.

Each row's baseline is measured in the same run:
* Groupware: parse-only of the same four files (lark LALR into our syntax tree), so the ratio
  shows what imports + evaluation add on top of parsing.
* Generated VANs: `json.loads` of the evaluated model's own JSON (what reading an already
  flattened answer costs), so the ratio says how far evaluation is from "just loading the result".
Per-component cost is printed in the note so linear growth is visible.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import Row, median_time

import cvl
from cvl.resolver import DefaultResolver
from cvl.syntax import parse

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "examples" / "paper"
ACME = PAPER / "AcmeGroupware.cvl"
GROUPWARE_FILES = [
    ACME,
    PAPER / "Groupware" / "Groupware.cvl",
    PAPER / "DNS" / "DNS.cvl",
    PAPER / "OpenLDAP" / "OpenLDAP.cvl",
    PAPER / "Firewall" / "Firewall.cvl",
]


def generated_van(count: int) -> str:
    """A VAN of `count` VMs; each names its neighbour through a map (references + escaping)."""
    lines = [
        'CVL = "0.8";',
        "Node extends VMAppliance {",
        '  var "required" role; var peer, port;',
        '  vm = "node.vmx"; port = "8080/tcp";',
        '  datadisks = { device => "vdb", size => "1gb" };',
        "}",
        "Big extends VANAppliance {",
    ]
    lines += [f"  Node c{i};" for i in range(count)]
    lines += [
        f'  c{i}.role = "r{i % 7}"; c{i}.peer = {{ name => c{i - 1}.name, port => c{i - 1}.port }};'
        for i in range(1, count)
    ]
    lines += ['  c0.role = "first";', '  vanIF = "c0.ethernet0";', "}"]
    return "\n".join(lines) + "\n"


def rows(only: Callable[[str], bool]) -> Iterator[Row]:
    name = "cvl: AcmeGroupware parse+import+evaluate (warm)"
    if only(name):
        texts = [(p.read_text(), str(p)) for p in GROUPWARE_FILES]
        cvl.evaluate_file(ACME)
        ours = median_time(lambda: cvl.evaluate_file(ACME, resolver=DefaultResolver()), repeat=21)
        base = median_time(lambda: [parse(t, f) for t, f in texts], repeat=21)
        yield Row(name, ours, "s", base, "parse-only of the same 5 files", "goal < 20 ms")
    for count in (100, 1_000, 10_000):
        name = f"cvl: generated VAN of {count:,} VMs parse+evaluate"
        if not only(name):
            continue
        text = generated_van(count)
        model = cvl.evaluate_text(text, "big.cvl")
        assert len(model.vms()) == count
        encoded = json.dumps(model.to_json())
        repeat = 5 if count < 10_000 else 3
        ours = median_time(lambda t=text: cvl.evaluate_text(t, "big.cvl"), repeat=repeat)
        base = median_time(lambda e=encoded: json.loads(e), repeat=repeat)
        goal = "goal < 1 s" if count == 1_000 else "goal: linear"
        yield Row(
            name,
            ours,
            "s",
            base,
            "json.loads of the model's JSON",
            goal,
            f"{ours / count * 1e6:.0f} us/VM",
        )
