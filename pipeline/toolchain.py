"""The pinned toolchain: ``constraints.txt`` (written by ``bash .ci/lock``) is the one source of
versions for the host install, docker/ and the qemu-aarch64 sysroot's wheels. Standard library only."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"


def normalize(name: str) -> str:
    """PEP 503 name: ``ml_dtypes`` and ``ML-Dtypes`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """{normalized name: version} of every ``name==version`` line; {} when the file is absent
    (an installed, non-editable pocketkd)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[normalize(name)] = version.strip()
    return out


def pinned(names: tuple[str, ...], path: Path = CONSTRAINTS) -> list[str]:
    """``name==version`` for each name: from constraints.txt, else the version installed here."""
    table = pins(path)
    out = []
    for name in names:
        version = table.get(normalize(name))
        if version is None:
            version = md.version(name)
        out.append(f"{name}=={version}")
    return out


def constraints_info(path: Path = CONSTRAINTS) -> dict:
    """What report.json records: the constraints file's sha256 and whether this install matches it."""
    if not path.is_file():
        return {"file": None, "sha256": None, "note": "no constraints.txt next to the code (installed package)"}
    table = pins(path)
    mismatched = {}
    for name, version in table.items():
        try:
            have = md.version(name).split("+", 1)[0]
        except md.PackageNotFoundError:
            continue
        if have != version:
            mismatched[name] = {"pinned": version, "installed": have}
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "pins": len(table),
            "installed_differs": mismatched}
