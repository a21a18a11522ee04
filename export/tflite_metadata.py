"""Standard TFLite model metadata: the ``ModelMetadata`` flatbuffer (file identifier ``M001``) in the
model's ``TFLITE_METADATA`` buffer, with its associated files (label file, ``metadata.json``) in a
zip appended to the ``.tflite``. This is what LiteRT's metadata tools, the Android metadata
extractor and Android Studio's ML model binding read: input normalisation, tensor names and
descriptions, the label file of a classifier.

Written with the published schema. ``export/metadata_schema.fbs`` is the schema of tflite-support
(``tensorflow_lite_support/metadata/metadata_schema.fbs``, schema version 1.5.0; MediaPipe ships the
same tables), read here with a small parser: field slots come from the schema's field order (a
union takes two, its ``_type`` and its value), never from numbers typed in by hand. The value
given to ``encode`` is the JSON form ``flatc --json`` prints for such a buffer, so the tests decode
our bytes with the FlatBuffers compiler itself, against the same schema, and compare.

No maintained writer installs with the pinned stack (checked with pip against constraints.txt):
tflite-support 0.4.4 requires protobuf<4 (the stack pins protobuf 7); MediaPipe 1.2.3, which carries
the metadata writers on, ships ``metadata.py`` without the native module it imports
(``mediapipe.tasks.cc.metadata.python``), and 0.10.21, the last release that has it, requires
numpy<2. The model flatbuffer itself is read and written with LiteRT's own
``ai_edge_litert.tools.flatbuffer_utils``.
"""

from __future__ import annotations

import io
import re
import zipfile
from functools import lru_cache
from pathlib import Path

SCHEMA = Path(__file__).with_name("metadata_schema.fbs")
METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry the extractor looks for
FILE_IDENTIFIER = b"M001"
# Every table and field written here exists since schema 1.0.0 (the schema's "Added in" notes and
# history start after it), so any metadata parser can read all of it.
MIN_PARSER_VERSION = "1.0.0"
_SCALARS = {"byte": "Int8", "ubyte": "Uint8", "bool": "Bool", "short": "Int16", "ushort": "Uint16", "int": "Int32",
            "uint": "Uint32", "long": "Int64", "ulong": "Uint64", "float": "Float32", "double": "Float64"}


class Schema:
    """Tables (fields in slot order), enums and unions of a ``.fbs`` file; enough to encode
    any buffer of it that uses no structs and no default values other than zero."""

    def __init__(self, text: str):
        text = re.sub(r"//[^\n]*", "", text)
        self.enums = {name: self._enum(body) for name, _, body in
                      re.findall(r"\benum\s+(\w+)\s*:\s*(\w+)\s*\{([^}]*)\}", text)}
        self.enum_types = {name: base for name, base, _ in re.findall(r"\benum\s+(\w+)\s*:\s*(\w+)\s*\{([^}]*)\}", text)}
        self.unions = {name: ["NONE", *(m.strip() for m in body.split(",") if m.strip())]
                       for name, body in re.findall(r"\bunion\s+(\w+)\s*\{([^}]*)\}", text)}
        self.tables = {name: [(f, t.strip()) for f, t in re.findall(r"(\w+)\s*:\s*([^;(=]+?)\s*(?:\([^)]*\))?\s*;", body)]
                       for name, body in re.findall(r"\btable\s+(\w+)\s*\{([^}]*)\}", text)}
        root = re.search(r"\broot_type\s+(\w+)\s*;", text)
        self.root = root.group(1) if root else None

    @staticmethod
    def _enum(body: str) -> dict[str, int]:
        out, value = {}, -1
        for item in (i.strip() for i in body.split(",")):
            if item:
                name, _, given = (p.strip() for p in item.partition("="))
                value = int(given) if given else value + 1
                out[name] = value
        return out

    def slots(self, table: str) -> dict[str, tuple[int, str]]:
        """{field: (slot, type)}; a union field ``u`` is ``u_type`` (ubyte) at slot i and ``u`` at i + 1."""
        out, slot = {}, 0
        for field, typ in self.tables[table]:
            if typ in self.unions:
                out[f"{field}_type"] = (slot, f"union:{typ}")
                slot += 1
            out[field] = (slot, typ)
            slot += 1
        return out


@lru_cache(maxsize=1)
def schema() -> Schema:
    return Schema(SCHEMA.read_text())


def encode(value: dict, table: str | None = None, sch: Schema | None = None) -> bytes:
    """The flatbuffer of ``value`` (flatc's JSON form: enum and union member names as strings,
    ``<union>_type`` beside each union value) as a ``table`` (default: the root type)."""
    import flatbuffers

    sch = sch or schema()
    table = table or sch.root
    builder = flatbuffers.Builder(1024)
    root = _table(builder, sch, table, value)
    builder.Finish(root, file_identifier=FILE_IDENTIFIER if table == sch.root else None)
    return bytes(builder.Output())


def _table(b, sch: Schema, table: str, value: dict) -> int:
    slots = sch.slots(table)
    unknown = set(value) - set(slots)
    if unknown:
        raise ValueError(f"{table} has no field {sorted(unknown)}; fields: {', '.join(slots)}")
    done = {}  # offsets of strings, vectors and tables: made before the table starts
    for field, v in value.items():
        typ = slots[field][1]
        if typ.startswith("union:"):
            continue
        if typ in sch.unions:
            member = value.get(f"{field}_type")
            if member not in sch.unions[typ][1:]:
                raise ValueError(f"{table}.{field}: {field}_type must be one of {sch.unions[typ][1:]}, not {member!r}")
            done[field] = _table(b, sch, member, v)
        elif typ == "string":
            done[field] = b.CreateString(str(v))
        elif typ.startswith("["):
            done[field] = _vector(b, sch, typ[1:-1].strip(), v)
        elif typ in sch.tables:
            done[field] = _table(b, sch, typ, v)
    b.StartObject(max((s for s, _ in slots.values()), default=-1) + 1)
    for field, v in value.items():
        slot, typ = slots[field]
        if field in done:
            b.PrependUOffsetTRelativeSlot(slot, done[field], 0)
        elif typ.startswith("union:"):
            b.PrependUint8Slot(slot, sch.unions[typ[6:]].index(v), 0)
        elif typ in sch.enums:
            if v not in sch.enums[typ]:
                raise ValueError(f"{table}.{field}: {v!r} is not one of {list(sch.enums[typ])}")
            getattr(b, f"Prepend{_SCALARS[sch.enum_types[typ]]}Slot")(slot, sch.enums[typ][v], 0)
        elif typ in _SCALARS:
            getattr(b, f"Prepend{_SCALARS[typ]}Slot")(slot, v, 0)
        else:
            raise ValueError(f"{table}.{field}: cannot encode type {typ}")
    return b.EndObject()


def _vector(b, sch: Schema, elem: str, items: list) -> int:
    if elem in _SCALARS:
        import numpy as np

        dtype = {"Int8": np.int8, "Uint8": np.uint8, "Bool": np.bool_, "Int16": np.int16, "Uint16": np.uint16,
                 "Int32": np.int32, "Uint32": np.uint32, "Int64": np.int64, "Uint64": np.uint64,
                 "Float32": np.float32, "Float64": np.float64}[_SCALARS[elem]]
        return b.CreateNumpyVector(np.asarray(items, dtype=dtype))
    if elem == "string":
        offsets = [b.CreateString(str(s)) for s in items]
    elif elem in sch.tables:
        offsets = [_table(b, sch, elem, item) for item in items]
    else:
        raise ValueError(f"cannot encode a vector of {elem}")
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


# --------------------------------------------------------------------------- the .tflite file


def embed(model_bytes: bytes, metadata: dict, files: dict[str, bytes]) -> bytes:
    """``model_bytes`` with ``metadata`` (a ``ModelMetadata`` in flatc's JSON form) as its
    ``TFLITE_METADATA`` buffer and ``files`` zipped after it (stored, as the extractor reads them).
    An existing ``TFLITE_METADATA`` entry and appended zip are replaced, so embedding twice gives
    the same bytes as once."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    named = {f["name"] for f in _associated(metadata)}
    if missing := named - set(files):
        raise ValueError(f"the metadata names associated files that are not given: {sorted(missing)}")
    model = fu.read_model_from_bytearray(bytearray(model_bytes))
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != METADATA_NAME]
    buffer = fu.BufferT()
    buffer.data = list(encode(metadata))
    model.buffers.append(buffer)
    entry = fu.schema_fb.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    out = io.BytesIO(bytes(fu.convert_object_to_bytearray(model)))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed time: same input, same bytes
            zf.writestr(info, files[name])
    return out.getvalue()


def _associated(metadata: dict) -> list[dict]:
    found = list(metadata.get("associated_files", []))
    for sub in metadata.get("subgraph_metadata", []):
        found += sub.get("associated_files", [])
        for t in (*sub.get("input_tensor_metadata", []), *sub.get("output_tensor_metadata", [])):
            found += t.get("associated_files", [])
    return found


def _name(raw) -> str:
    return raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)


def read_metadata_buffer(path: Path) -> bytes:
    """The raw ``ModelMetadata`` flatbuffer of a ``.tflite`` file (``ValueError`` when it has none)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    for m in model.metadata or []:
        if _name(m.name) == METADATA_NAME:
            data = bytes(bytearray(model.buffers[m.buffer].data))
            if data[4:8] != FILE_IDENTIFIER:
                raise ValueError(f"{path}: {METADATA_NAME} is not a {FILE_IDENTIFIER.decode()} metadata buffer")
            return data
    raise ValueError(f"{path}: no {METADATA_NAME} entry (the file carries no standard TFLite metadata)")


def associated_files(path: Path) -> dict[str, bytes]:
    """The files zipped after the model (the label file, metadata.json)."""
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}
