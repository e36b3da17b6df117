"""Typed, strictly validated run configuration, loaded from TOML.

Every command reads one TOML file plus ``--set section.key=value`` overrides:

    cfg = load_config("configs/tiny.toml", ["data.max_seq_len=256", "train.lr=1e-3"])
    print(to_toml(cfg))

An unknown section or key, or a value of the wrong type, is a ``ConfigError`` that names the
key and lists the valid ones. Each field's docstring (the string literal under it) is its
documentation; ``describe(cfg)`` renders them for ``--help-config``. The sections themselves:
trainer.config.sections and trainer.config.run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import tomllib
import typing
from pathlib import Path
from typing import Literal

from trainer.config.run import SECTIONS, RunConfig
from trainer.config.sections import ConfigError, check


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return tp.__name__


def coerce(key: str, value, tp):
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        check(value in typing.get_args(tp), key, f"got {value!r}, expected {_type_name(tp)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, item_tp):
            value = [value]
        check(isinstance(value, list), key, f"got {value!r}, expected {_type_name(tp)}")
        return [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    check(ok, key, f"got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    return value


def parse_override(text: str):
    """``section.key=value`` -> (section, key, value) with value parsed as a TOML value when
    it is one (numbers, booleans, quoted strings, arrays) and taken as a bare string otherwise."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.lr=1e-3")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def build_sections(raw: dict, sections: dict[str, type], source: str,
                   free: tuple[str, ...] = ()) -> dict:
    """``{section: dataclass instance}`` from nested ``{section: {key: value}}``, each value
    coerced to its field's type; a missing section is all defaults. An unknown section (other
    than the ``free`` ones, which the caller reads itself) or key is a ConfigError naming it
    and the valid ones."""
    unknown = sorted(set(raw) - {*sections, *free})
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections: "
                          f"{sorted({*sections, *free})}")
    built = {}
    for name, cls in sections.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, got {values!r}")
        hints = typing.get_type_hints(cls)
        bad = sorted(set(values) - set(hints))
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {[f'{name}.{k}' for k in bad]}; valid "
                              f"keys of [{name}]: {', '.join(sorted(hints))}")
        built[name] = cls(**{k: coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()})
    return built


def build_config(raw: dict, source: str = "<dict>") -> RunConfig:
    """Build a validated RunConfig from nested ``{section: {key: value}}``."""
    return RunConfig(**build_sections(raw, SECTIONS, source))


def read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's tables, with ``extends = "other.toml"`` (relative to the file) resolved:
    the file's keys override the ones it extends, key by key."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped configs are in configs/")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' makes a cycle: "
                          + " -> ".join(str(p) for p in (*seen, path.resolve())))
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a path string, got {parent!r}")
    merged = read_toml(path.parent / parent, (*seen, path.resolve()))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...],
                    sections: dict[str, type], free: tuple[str, ...] = ()) -> dict:
    """Set each ``section.key=value`` of ``overrides`` in the nested dict ``raw``; the key must
    be a field of ``sections[section]``, except in the ``free`` sections (any key)."""
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in sections and section not in free:
            raise ConfigError(f"--set {text!r}: unknown section {section!r}; valid sections: "
                              f"{sorted({*sections, *free})}")
        if section in sections:
            hints = typing.get_type_hints(sections[section])
            if key not in hints:
                raise ConfigError(f"--set {text!r}: unknown key {section}.{key}; valid keys "
                                  f"of [{section}]: {', '.join(sorted(hints))}")
        raw.setdefault(section, {})[key] = value
    return raw


def grid_product(axes: list[tuple[str, list]]) -> list[list[tuple[str, object]]]:
    """Every combination of the axes' values, as ``(key, value)`` pairs in axis order; the
    last axis varies fastest (itertools.product), so points run in the order they are listed.
    The grid of both fast-electra sweep and fast-electra finetune --grid."""
    keys = [k for k, _ in axes]
    return [list(zip(keys, combo, strict=True))
            for combo in itertools.product(*(values for _, values in axes))]


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a TOML run config (following ``extends``) and apply ``section.key=value``
    overrides, strictly."""
    path = Path(path)
    return build_config(apply_overrides(read_toml(path), overrides, SECTIONS), str(path))


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg) -> str:
    """The resolved config as TOML that ``load_config`` reads back to an equal RunConfig. Any
    dataclass whose fields are tables works (the fine-tuning task files use it too)."""
    lines = []
    for name, values in dataclasses.asdict(cfg).items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a config dataclass,
    inherited fields included (a subclass's own docstring for a field wins)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe(cfg, sections: dict[str, type] = SECTIONS) -> str:
    """Every key of ``sections`` with its current value in ``cfg`` and its documentation
    (``--help-config``)."""
    out = []
    for name, cls in sections.items():
        out.append(f"[{name}]  {cls.__doc__}")
        docs = field_docs(cls)
        for k, v in dataclasses.asdict(getattr(cfg, name)).items():
            out.append(f"  {name}.{k} = {toml_value(v)}\n      {docs.get(k, '')}")
    return "\n".join(out)
