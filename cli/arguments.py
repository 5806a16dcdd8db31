"""The command line's half of `gateway.options`: one argparse argument per configuration
field, and the configuration from defaults, then `--config FILE.toml`, then the flags
given. The namespace stops here: what leaves is a configuration value."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from gateway.options import ConfigError, Field, fields, make, read_table


def add_arguments(parser: argparse.ArgumentParser, config_type: type,
                  only: Sequence[str] | None = None) -> None:
    """One argument per field (of the sections named in `only`, or all). Defaults are left
    out of the namespace (SUPPRESS) so that `build` knows which flags were given."""
    for each in fields(config_type):
        if only is not None and each.section not in only:
            continue
        if each.how.positional:
            parser.add_argument(each.name, nargs=argparse.REMAINDER, default=argparse.SUPPRESS,
                                help=each.how.help)
            continue
        shown = "" if each.default in (None, False, ()) else f" (default {each.default})"
        common: dict[str, Any] = {"dest": each.key, "default": argparse.SUPPRESS,
                                  "help": each.how.help + shown}
        if each.base is bool and not each.repeated:
            parser.add_argument(each.flag, action="store_true", **common)
            continue
        parser.add_argument(each.flag, type=_text_converter(each),
                            action="append" if each.repeated else "store",
                            metavar=each.how.metavar, **common)


def _text_converter(each: Field) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return each.convert_one(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = each.flag  # argparse names it in "invalid ... value"
    return convert


@dataclasses.dataclass(frozen=True)
class Built:
    """A configuration, and where the given flags overrode the file."""

    config: Any
    overridden: tuple[str, ...]  # "section.name: file X, flag Y"


def log_overridden(overridden: Sequence[str], logger: str) -> None:
    """Say in the start log which `--config` entries a flag overrode."""
    for each in overridden:
        structlog.get_logger(logger).info("config_overridden", detail=each,
                                          reason="the flag wins over --config")


def build(config_type: type, namespace: argparse.Namespace,
          file_values: Mapping[str, Any] | None = None) -> Built:
    """The configuration from defaults, then `file_values` (a parsed TOML document), then
    the flags given on the command line."""
    given = vars(namespace)
    chosen = read_table(config_type, file_values or {})
    overridden = []
    for each in fields(config_type):
        if each.how.positional:
            if each.name in given:
                flagged: Any = tuple(a for a in given[each.name] if a != "--")
                if flagged or each.key not in chosen:
                    chosen[each.key] = flagged
            continue
        if each.key not in given:
            continue
        flagged = given[each.key]
        flagged = tuple(flagged) if each.repeated else flagged
        if each.key in chosen and chosen[each.key] != flagged:
            overridden.append(f"{each.key}: file {chosen[each.key]!r}, flag {flagged!r}")
        chosen[each.key] = flagged
    return Built(make(config_type, chosen), tuple(overridden))
