"""Reading a config: the shipped default, a YAML file on top, ``--set`` overrides; one-line errors."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.schema import Config
from pipeline.errors import UserError, os_error_text

DEFAULT_CONFIG = "default.yaml"




class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {key!r} appears twice (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (YAML says keys are unique;
    PyYAML silently keeps the last one)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise DuplicateKeyError(key, seen[key], key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: the base constructor reports it
            pass
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def strict_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys as an error (``DuplicateKeyError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def read_user_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file the user named; every OS or encoding problem is one UserError line."""
    try:
        if path.is_symlink() and not path.exists():
            raise UserError(f"{what} {path}: dangling symlink or symlink loop; give a regular file")
        if not path.exists():
            raise UserError(f"{what} {path} does not exist")
        if not path.is_file():
            raise UserError(f"{what} {path} is not a file")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, RuntimeError) as exc:
        raise UserError(f"{what} {path}: cannot be read: {os_error_text(exc)}; "
                        "it must be a readable UTF-8 YAML file") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    text = read_user_text(path, "config file")
    try:
        data = strict_yaml_load(text)
    except DuplicateKeyError as exc:
        raise UserError(f"config file {path}: {exc}; each key may appear once per section") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {' '.join(str(problem).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, got a {type(data).__name__}")
    return data


def _resolve_source_paths(tree: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative data.source paths (and teacher.onnx / teacher.checkpoint) in a config file are relative
    to that file's directory; they are stored absolute so the run directory's config.yaml still works."""
    def fix(node: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        for key in keys:
            value = node.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                try:
                    node[key] = str((base / value).resolve())
                except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
                    raise UserError(f"config key {key} = {value!r}: {os_error_text(exc)}; give a real file or "
                                    "directory") from None

    fix((tree.get("data") or {}).get("source") if isinstance(tree.get("data"), dict) else None, ("path", "root"))
    fix(tree.get("teacher"), ("onnx", "checkpoint"))
    return tree


def default_config_dict() -> dict[str, Any]:
    text = resources.files("pipeline").joinpath(DEFAULT_CONFIG).read_text()
    return yaml.safe_load(text) or {}


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set teacher.train.epochs=10")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {assignment!r}: {key!r} is not a dotted key such as data.noise.sigma")
    try:
        value = strict_yaml_load(raw) if raw.strip() else ""
    except DuplicateKeyError as exc:
        raise UserError(f"--set {assignment!r}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {assignment!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            lines.append(f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("value_error", "assertion_error"):
            lines.append(f"key '{key}': {msg}")
        else:
            lines.append(f"key '{key}' = {err.get('input')!r}: {msg}")
    head = f"invalid config ({source}): "
    return head + "; ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Default config, then the file at ``path`` on top, then ``--set`` overrides; validated."""
    tree = default_config_dict()
    source = "default config"
    if path is not None:
        path = Path(path)
        tree = _deep_merge(tree, _resolve_source_paths(_read_yaml(path), path.parent))
        source = str(path)
    return _validate(tree, overrides, source)


def config_from_dict(sections: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Default config, then ``sections`` (a dict shaped like a config file) on top, then overrides.
    Relative paths are relative to the current directory."""
    tree = _deep_merge(default_config_dict(), _resolve_source_paths(copy.deepcopy(sections), Path.cwd()))
    return _validate(tree, overrides, "config dict")


def _validate(tree: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> Config:
    for assignment in overrides:
        _apply_override(tree, assignment)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from None
