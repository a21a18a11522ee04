"""A cache of conversions keyed by content, shared by every run directory on the machine.

A conversion (PyTorch -> ONNX, ONNX -> TFLite, TensorFlow's load check of a .tflite) is a pure
function of what it reads. Its key is the sha256 of: the kind of conversion, the bytes of every
input (model file, calibration array), the options, the versions of the tools that do it (as
installed, which the pinned toolchain fixes), the source of our own code that drives them, the
Python version and the machine architecture. The same key means the same output bytes, so a run
that changed only ``export.limits``, bench or report settings, or another run directory with the
same student, copies the files instead of converting.

Where: ``$POCKETKD_CONVERSION_CACHE`` if set (``off`` disables the cache), else
``${POCKETKD_CACHE:-~/.cache/pocketkd}/conversions``. Clear it with ``python -m pipeline cache clear``;
``python -m pipeline cache info`` shows its path, entries and size.

One entry is a directory ``<root>/<key>/`` holding the files and ``entry.json`` (kind, what the
key was made of, each file's sha256 and size, and the conversion's small JSON result). It is
written in a temp directory beside it and renamed into place: two runs writing the same key at
once cannot mix their files; the loser of the rename uses the winner's entry. Every read copies
the files out and checks each copy's sha256 against ``entry.json``; a missing, truncated or
altered entry is discarded and the conversion made again, never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from pipeline.io import sha256_file

log = logging.getLogger(__name__)

ENV = "POCKETKD_CONVERSION_CACHE"
ENTRY = "entry.json"
FORMAT = 1  # the layout of an entry; part of every key
STATS: Counter = Counter()  # this process: hits, made (stored), corrupt (discarded and re-made)
_LOCK = threading.Lock()


def root() -> Path | None:
    """The cache directory, or None when ``POCKETKD_CONVERSION_CACHE=off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "false", "none"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("POCKETKD_CACHE") or Path.home() / ".cache" / "pocketkd"
    return Path(base).expanduser() / "conversions"


def versions(*dists: str) -> dict[str, str]:
    """{distribution: installed version} ('missing' when not installed). Alternatives are written
    ``a|b`` (the first installed one counts, e.g. ``tensorflow|tensorflow-cpu``)."""
    out = {}
    for spec in dists:
        for name in spec.split("|"):
            try:
                out[spec] = md.version(name)
                break
            except md.PackageNotFoundError:
                continue
        else:
            out[spec] = "missing"
    return out


def source_hash(*modules_or_files) -> str:
    """sha256 over the source files of our own code that drives a conversion (module objects or paths)."""
    h = hashlib.sha256()
    for m in modules_or_files:
        path = Path(m if isinstance(m, (str, os.PathLike)) else m.__file__)
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def make_key(kind: str, inputs: dict[str, str], options: dict, tools: dict[str, str], code: str) -> tuple[str, dict]:
    """(key, parts): ``inputs`` maps names to the sha256 of what is read; ``options`` is JSON."""
    parts = {"format": FORMAT, "kind": kind, "inputs": inputs, "options": options, "tools": tools, "code": code,
             "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "machine": platform.machine()}
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest(), parts


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ConversionCache:
    def __init__(self, directory: Path | None = None, *, enabled: bool = True):
        self.dir = directory if directory is not None else root()
        self.enabled = enabled and self.dir is not None

    # ------------------------------------------------------------------ read
    def fetch(self, key: str, dest: dict[str, Path]) -> dict | None:
        """Copy the entry's files to ``dest`` ({stored name: destination}) and return its result
        dict; None when there is no valid entry (then nothing is trusted and the caller converts)."""
        if not self.enabled:
            return None
        entry_dir = self.dir / key
        if not entry_dir.is_dir():
            return None
        try:
            entry = json.loads((entry_dir / ENTRY).read_text())
            files = entry["files"]
            for name, target in dest.items():
                copied = _copy(entry_dir / name, target)
                if sha256_file(copied) != files[name]["sha256"]:
                    raise ValueError(f"{name}: sha256 does not match {ENTRY}")
        except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            self._corrupt(entry_dir, str(exc))
            return None
        self._count("hits")
        return entry.get("result") or {}

    def _corrupt(self, entry_dir: Path, why: str) -> None:
        log.warning("conversion cache: discarding damaged entry %s (%s); converting again", entry_dir.name[:12], why)
        self._count("corrupt")
        _discard(entry_dir)

    # ------------------------------------------------------------------ write
    def store(self, key: str, parts: dict, files: dict[str, Path], result: dict | None = None) -> None:
        """Add an entry (best effort: a full disk or a read-only cache only costs the next run time)."""
        if not self.enabled:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=self.dir))
        except OSError as exc:
            log.warning("conversion cache %s is not writable (%s); not caching", self.dir, exc)
            return
        try:
            listed = {}
            for name, src in files.items():
                _copy(src, tmp / name)
                listed[name] = {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
            entry = {"kind": parts.get("kind"), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "parts": parts, "files": listed, "result": result or {}}
            (tmp / ENTRY).write_text(json.dumps(entry, indent=1, sort_keys=True))  # last: an entry without it is incomplete
            self._publish(tmp, self.dir / key)
            self._count("made")
        except OSError as exc:
            log.warning("conversion cache: could not store %s (%s)", key[:12], exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, final: Path) -> None:
        for _ in range(3):
            try:
                os.rename(tmp, final)  # atomic; fails when ``final`` exists and is not empty
                return
            except OSError:
                if not final.exists():
                    continue
                if _valid(final):  # another run wrote the same key first: keep the winner
                    return
                _discard(final)  # a damaged entry is in the way

    # ------------------------------------------------------------------ manage
    def entries(self) -> list[dict]:
        if not self.enabled or not self.dir.is_dir():
            return []
        out = []
        for d in sorted(self.dir.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                entry = json.loads((d / ENTRY).read_text())
            except (OSError, ValueError):
                entry = {"kind": "incomplete"}
            out.append({"key": d.name, "kind": entry.get("kind"), "created": entry.get("created"),
                        "bytes": sum(p.stat().st_size for p in d.iterdir() if p.is_file())})
        return out

    def info(self) -> dict:
        entries = self.entries()
        kinds = Counter(e["kind"] for e in entries)
        return {"path": str(self.dir) if self.dir else None, "enabled": self.enabled, "entries": len(entries),
                "bytes": sum(e["bytes"] for e in entries), "kinds": dict(sorted(kinds.items()))}

    def clear(self) -> int:
        """Remove every entry (and leftovers of interrupted writes); returns how many entries."""
        if not self.enabled or not self.dir.is_dir():
            return 0
        n = 0
        for d in self.dir.iterdir():
            if d.is_dir():
                n += not d.name.startswith(".")
                _discard(d)
        return n

    @staticmethod
    def _count(what: str) -> None:
        with _LOCK:
            STATS[what] += 1


def _copy(src: Path, dst: Path) -> Path:
    """Copy through a temp file renamed over ``dst``: a reader never sees half a file. (Not
    ``pipeline.io.atomic_copy``, which writes only on rank 0 under torchrun: the cache is the machine's.)"""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def _valid(entry_dir: Path) -> bool:
    try:
        files = json.loads((entry_dir / ENTRY).read_text())["files"]
        return all(sha256_file(entry_dir / n) == f["sha256"] for n, f in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _discard(entry_dir: Path) -> None:
    """Move aside, then delete: a reader never sees half an entry under its key."""
    trash = entry_dir.with_name(f".trash-{entry_dir.name[:16]}-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(entry_dir, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
