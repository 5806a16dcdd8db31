"""HTTP field lists as the dialects and Binary HTTP carry them: `(name, value)` pairs,
names in lower case (RFC 9110 section 5.1: names are case-insensitive)."""

from __future__ import annotations

Fields = tuple[tuple[str, str], ...]


def field_value(fields: Fields, name: str) -> str | None:
    """The first value of `name`, or None."""
    name = name.lower()
    for key, value in fields:
        if key == name:
            return value
    return None


def media_type(fields: Fields) -> str:
    """The media type of `content-type`, lower case, without parameters."""
    return (field_value(fields, "content-type") or "").split(";")[0].strip().lower()
