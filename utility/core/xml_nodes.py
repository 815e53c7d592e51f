"""A minimal element builder shared by the declarative domain and network XML classes.

Every value goes through ElementTree, so it is escaped; no XML is ever assembled from strings.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

Child = "ET.Element | None"


def el(
    tag: str,
    attrs: Mapping[str, str | int | None] | None = None,
    children: Iterable[ET.Element | None] = (),
    text: str | int | None = None,
) -> ET.Element:
    """An element with attributes (None values dropped), children (None dropped) and text."""
    element = ET.Element(tag, {k: str(v) for k, v in (attrs or {}).items() if v is not None})
    for child in children:
        if child is not None:
            element.append(child)
    if text is not None:
        element.text = str(text)
    return element


def render(element: ET.Element) -> str:
    """Pretty-printed XML text (stable, so golden files compare byte for byte)."""
    ET.indent(element, space="  ")
    return ET.tostring(element, encoding="unicode") + "\n"
