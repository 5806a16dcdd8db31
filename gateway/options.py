"""Options: a configuration as a frozen dataclass of sections, each a frozen dataclass of
fields whose metadata says how the command line spells it, what it means, and whether it
shapes the attested workload. From that one description come the argument parser, the
`--config FILE.toml` reader and the workload manifest's `settings`, so an option is
written once (the pattern of vLLM's `EngineArgs.add_cli_args`, without its dependence on
docstrings; argparse and tomllib do the parsing, this module only maps fields to them).
The argparse half is the command line's (`cli/arguments.py`): below it no namespace.

    @dataclass(frozen=True)
    class Limits:
        max_in_flight: int = option(256, "requests served at once before 503", minimum=1)

A field is measured (named in the manifest) unless `unmeasured=` says why not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

_META = "cloister.option"


class ConfigError(ValueError):
    """A configuration entry that cannot be used; the message names the key and the form
    it allows."""


@dataclasses.dataclass(frozen=True)
class Option:
    help: str
    flag: str | None = None  # default: --the-field-name
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    parse: Callable[[str], Any] | None = None  # text (a flag, a TOML string) -> value
    unmeasured: str | None = None  # why this field does not shape the workload
    measure: Callable[[Any], Any] | None = None  # value -> what the manifest names
    manifest_name: str | None = None
    positional: bool = False  # the rest of the command line, after `--`


def option(default: Any, help: str = "", **how: Any) -> Any:
    """A configuration field: its default, its help text, and `Option`'s other keys."""
    meta = {_META: Option(help, **how)}
    if isinstance(default, list):
        raise TypeError("a repeatable option's default is a tuple")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Field:
    """One option of one section, with its Python type resolved."""

    section: str
    name: str
    kind: Any  # the annotation, resolved
    default: Any
    how: Option

    @property
    def flag(self) -> str:
        return self.how.flag or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def repeated(self) -> bool:
        return typing.get_origin(self.kind) is tuple

    @property
    def base(self) -> Any:
        """The type of one value: `int` for `int | None`, `Path` for `tuple[Path, ...]`."""
        kind = self.kind
        if self.repeated:
            kind = typing.get_args(kind)[0]
        if _is_union(kind):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        return kind

    @property
    def optional(self) -> bool:
        return _is_union(self.kind) and type(None) in typing.get_args(self.kind)

    def form(self) -> str:
        """The allowed form, for error messages."""
        if self.how.choices:
            text = "one of " + ", ".join(self.how.choices)
        elif self.how.metavar:
            text = self.how.metavar
        else:
            text = {bool: "true or false", int: "an integer", float: "a number",
                    str: "a string", Path: "a file path"}.get(self.base, "a string")
        if self.how.minimum is not None:
            text += f" of at least {self.how.minimum:g}"
        if self.repeated:
            text = f"a list of {text}"
        return text + (" (or absent)" if self.optional else "")

    def convert(self, value: Any) -> Any:
        """A value from text or TOML, checked against the field's type and range;
        `ConfigError` otherwise."""
        if self.repeated:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{self.key} ({self.flag}) must be {self.form()}")
            return tuple(self.convert_one(v) for v in value)
        return self.convert_one(value)

    def convert_one(self, value: Any) -> Any:
        """One value (of a repeatable field: one of its values), as `convert` checks it."""
        base = self.base
        try:
            if self.how.parse is not None and isinstance(value, str):
                value = self.how.parse(value)
            elif base is bool:
                if not isinstance(value, bool):
                    raise TypeError
            elif base is int:
                value = int(value) if isinstance(value, str) else value
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError
            elif base is float:
                value = float(value) if isinstance(value, str) else value
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TypeError
                value = float(value)
            elif base is Path:
                if not isinstance(value, (str, Path)):
                    raise TypeError
                value = Path(value)
            elif not isinstance(value, str):
                raise TypeError
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if isinstance(exc, ValueError) and str(exc) else ""
            raise ConfigError(f"{self.key} ({self.flag}) must be {self.form()}{detail}"
                              ) from None
        if self.how.choices and value not in self.how.choices:
            raise ConfigError(f"{self.key} ({self.flag}) must be {self.form()}, not {value!r}")
        if self.how.minimum is not None and value < self.how.minimum:
            raise ConfigError(f"{self.key} ({self.flag}) must be {self.form()}, not {value!r}")
        return value

    def measured(self, value: Any) -> Any:
        """What the workload manifest names for `value` (JSON): files by their SHA-256,
        so a trust anchor is measured by what it holds, not where it lies."""
        try:
            if self.how.measure is not None:
                return self.how.measure(value)
            return _measured(value)
        except OSError as exc:
            raise ConfigError(f"{self.key} ({self.flag}): {exc.filename}: {exc.strerror}"
                              ) from None


def _is_union(kind: Any) -> bool:
    return isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union


def _measured(value: Any) -> Any:
    if isinstance(value, Path):
        return hashlib.sha256(value.read_bytes()).hexdigest()
    if isinstance(value, tuple):
        return [_measured(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def sections(config_type: type) -> Iterator[tuple[str, type]]:
    hints = typing.get_type_hints(config_type)
    for each in dataclasses.fields(config_type):
        yield each.name, hints[each.name]


def fields(config_type: type) -> list[Field]:
    """Every option of a configuration type, section by section."""
    out = []
    for section, section_type in sections(config_type):
        hints = typing.get_type_hints(section_type)
        for each in dataclasses.fields(section_type):
            how = each.metadata.get(_META)
            if not isinstance(how, Option):
                raise TypeError(f"{section_type.__name__}.{each.name} is not an option()")
            out.append(Field(section, each.name, hints[each.name], each.default, how))
    return out


def read_table(config_type: type, document: Mapping[str, Any]) -> dict[str, Any]:
    """`{"section.name": value}` from a TOML document's tables; `ConfigError` for an
    unknown section or key, a wrong type or a value out of range."""
    by_key = {each.key: each for each in fields(config_type)}
    names = [name for name, _ in sections(config_type)]
    out: dict[str, Any] = {}
    for section, table in document.items():
        if section not in names:
            raise ConfigError(f"unknown section [{section}]; the sections are "
                              + ", ".join(names))
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table of its options")
        for name, value in table.items():
            each = by_key.get(f"{section}.{name}")
            if each is None:
                known = ", ".join(k.split(".", 1)[1] for k in by_key
                                  if k.startswith(section + "."))
                raise ConfigError(f"unknown key {section}.{name}; [{section}] has {known}")
            out[each.key] = each.convert(value)
    return out


def load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not TOML ({exc})") from None


def make(config_type: type, chosen: Mapping[str, Any]) -> Any:
    """An instance of `config_type` with `chosen` (`{"section.name": value}`) over the
    defaults."""
    parts: dict[str, dict[str, Any]] = {name: {} for name, _ in sections(config_type)}
    for key, value in chosen.items():
        section, name = key.split(".", 1)
        parts[section][name] = value
    return config_type(**{name: kind(**parts[name]) for name, kind in sections(config_type)})


def of(config_type: type, **flat: Any) -> Any:
    """An instance from field names alone (they are unique across sections): for
    programs and tests that set a few options."""
    by_name = {each.name: each for each in fields(config_type)}
    unknown = set(flat) - set(by_name)
    if unknown:
        raise TypeError(f"no such option: {', '.join(sorted(unknown))}")
    return make(config_type, {by_name[name].key: value for name, value in flat.items()})


def workload_settings(config: Any) -> dict[str, Any]:
    """What the manifest's `settings` names: every measured field, by its manifest name."""
    out: dict[str, Any] = {}
    for each in fields(type(config)):
        if each.how.unmeasured is None:
            value = getattr(getattr(config, each.section), each.name)
            out[each.how.manifest_name or each.name] = each.measured(value)
    return out


def flags_of(config_type: type) -> Sequence[str]:
    return [each.flag for each in fields(config_type) if not each.how.positional]
