"""NVIDIA Reference Integrity Manifests (RIMs): the SWID tags (ISO/IEC 19770-2) NVIDIA's
RIM service publishes per driver (`NV_GPU_DRIVER_GH100_<version>`) and per VBIOS
(`NV_GPU_VBIOS_<project>_<sku>_<chip>_<version>`), each naming its version
(`Meta/@colloquialVersion`) and the golden values of the GPU's measurement blocks
(`Payload/Resource[@type="Measurement"]`: `index`, `active`, `Hash0`..`HashN`).

`cloister release values --gpu-rim` reads them into the reference values' `[gpu]` section:
the accepted driver and VBIOS versions, and per measurement block the accepted values
(a RIM's index counts from 0, the report's SPDM block index from 1). The RIMs' XML
signatures are not checked here: the release pipeline fetches them from NVIDIA's service
over TLS, and the release key's signature over the statement is what clients trust.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

MAX_RIM_SIZE = 4 << 20
_VBIOS_VERSION = re.compile(r"^[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}$")
_DRIVER_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){1,3}$")


class RimError(ValueError):
    """Not a RIM this parser understands; the message says what is missing."""


@dataclass(frozen=True)
class Rim:
    kind: str                             # "driver" or "vbios"
    version: str                          # 550.90.07 / 96.00.9F.00.01
    measurements: dict[int, frozenset[str]]  # SPDM block index -> accepted hex values


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_rim(raw: bytes) -> Rim:
    if len(raw) > MAX_RIM_SIZE or b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise RimError("not a RIM (too large, or it declares a DTD)")
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as exc:
        raise RimError(f"not XML ({exc})") from None
    if _local(root.tag) != "SoftwareIdentity":
        raise RimError("the root element is not SoftwareIdentity")
    children = {_local(child.tag): child for child in root}
    meta, payload = children.get("Meta"), children.get("Payload")
    if meta is None or payload is None:
        raise RimError("no Meta or no Payload element")
    version = meta.get("colloquialVersion", "")
    if _VBIOS_VERSION.match(version):
        kind, version = "vbios", version.upper()
    elif _DRIVER_VERSION.match(version):
        kind = "driver"
    else:
        raise RimError(f"colloquialVersion {version!r} is neither a driver nor a VBIOS one")
    measurements: dict[int, frozenset[str]] = {}
    for resource in payload:
        if _local(resource.tag) != "Resource" or resource.get("type") != "Measurement":
            continue
        if resource.get("active", "true").lower() != "true":
            continue
        try:
            index = int(resource.get("index", ""))
        except ValueError:
            raise RimError("a measurement without an index") from None
        hashes = frozenset(value.lower() for name, value in resource.attrib.items()
                           if re.fullmatch(r"Hash[0-9]+", name))
        if not hashes or not all(re.fullmatch(r"[0-9a-f]{64,128}", h) for h in hashes):
            raise RimError(f"measurement {index} has no hex values")
        measurements[index + 1] = hashes
    return Rim(kind, version, measurements)
