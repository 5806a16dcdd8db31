"""docs/configuration.md, written from the configuration types themselves, so the reference
cannot drift from the code (a test compares; `python -m gateway.config_reference` rewrites
it)."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway import options
from gateway.config import KeyholderConfig, ServeConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

_INTRO = """# Configuration reference

Generated from `gateway/config.py` by `python -m gateway.config_reference`; a test fails
when this file is out of date. Every option is a flag and an entry of a `--config
FILE.toml` file (one table per section); a flag given on the command line wins over the
file, and the start log says so (`config_overridden`). A bad entry (unknown key, wrong
type, out of range) refuses the start with the key's name and the form it allows.

**Measured** options are named in the workload manifest's `settings`, so they are part of
the workload digest that clients and the fleet pin: two gateways that differ in one of
them are different workloads. The others say why they are not.

```toml
# cloister.toml: cloister serve --config cloister.toml
[limits]
max_in_flight = 128
max_per_client = 8

[side_channels]
padding = "fixed:4096"
```
"""


def _default(each: options.Field) -> str:
    value = each.default
    if value in (None, ()):
        return "none"
    if value is False:
        return "off"
    return f"`{value}`"


def _table(config_type: type, command: str) -> list[str]:
    lines = []
    section = None
    for each in options.fields(config_type):
        if each.section != section:
            section = each.section
            lines += ["", f"### `[{section}]`", "",
                      "| flag | default | measured | meaning |", "| --- | --- | --- | --- |"]
        flag = ("`-- ARGS...`" if each.how.positional
                else f"`{each.flag}`" + (" (repeatable)" if each.repeated else ""))
        measured = "yes" if each.how.unmeasured is None else f"no: {each.how.unmeasured}"
        lines.append(f"| {flag} | {_default(each)} | {measured} | "
                     f"{each.how.help.replace('|', '/')} |")
    return [f"## `cloister {command}`", *lines, ""]


def reference() -> str:
    return "\n".join([_INTRO, *_table(ServeConfig, "serve"),
                      *_table(KeyholderConfig, "keyholder")])


if __name__ == "__main__":
    DOC.write_text(reference())
    sys.stdout.write(f"wrote {DOC}\n")
