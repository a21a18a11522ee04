"""A stage's view of the config: the sections it declared, and nothing else.

``ConfigSlice(cfg, ("export", "distill.method"))`` reads like the ``Config`` it wraps, but reading a
section the stage did not declare (``cfg.bench``, or ``cfg.distill.kd`` next to ``distill.method``)
raises ``UndeclaredConfigError``: a stage's cache key (the hash of its declared slice) can then never
miss a value the stage used. ``hash()`` is the hash of the slice, so a hash a stage embeds in its
files changes exactly when its cache key does. ``seed`` is always part of a slice. ``"*"`` declares
the whole config (the report, which records all of it).
"""

from __future__ import annotations

from typing import Any

from pipeline.config.schema import ALL_CONFIG, Config


class UndeclaredConfigError(RuntimeError):
    """A stage read a config value outside its declared slice: a bug in the stage table."""


class ConfigSlice:
    def __init__(self, cfg: Config, keys: tuple[str, ...], _node: Any = None, _prefix: str = ""):
        self._cfg, self._keys = cfg, tuple(keys)
        self._node = cfg if _node is None else _node
        self._prefix = _prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._node, name)
        if callable(value) and not self._prefix:
            raise UndeclaredConfigError(f"ConfigSlice.{name} is not available to a stage; use hash() or "
                                        "the declared sections")
        key = self._prefix + name
        if ALL_CONFIG[0] in self._keys or key == "seed" or any(key == k or key.startswith(k + ".") for k in self._keys):
            return value
        if any(k.startswith(key + ".") for k in self._keys):
            return ConfigSlice(self._cfg, self._keys, value, key + ".")
        raise UndeclaredConfigError(f"config '{key}' is read by a stage that declares only "
                                    f"{', '.join(self._keys)}; add it to the stage's config slice")

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    def hash(self) -> str:
        """The hash of the declared slice (plus the seed): what the stage's cache key holds."""
        return self._cfg.section_hash(*self._keys)

    def to_dict(self) -> dict[str, Any]:
        if ALL_CONFIG[0] not in self._keys:
            raise UndeclaredConfigError("to_dict() needs the whole config; declare ALL_CONFIG")
        return self._cfg.to_dict()

    def whole(self) -> Config:
        """The full ``Config``, for a stage that declared ``ALL_CONFIG``."""
        if ALL_CONFIG[0] not in self._keys:
            raise UndeclaredConfigError("whole() needs the whole config; declare ALL_CONFIG")
        return self._cfg

    def __repr__(self) -> str:
        return f"ConfigSlice({', '.join(self._keys)})"
