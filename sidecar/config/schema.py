"""The JSON Schema of the config file, generated from the key tables; ``python -m`` writes it.

``python -m sidecar.config.schema [FILE]`` prints the schema (or writes it to
``FILE``). :func:`config_schema` walks the key tables of
:mod:`sidecar.config._keys` and renders each key's kind, default and
description and each table's rules, so a key declared there appears here
without a change to this module; only a new *kind* of value or rule needs a
rendering below (mypy's exhaustiveness check points at it).
``docs/config.schema.json`` is this module's output, and
tests/test_config_schema.py fails when the committed file differs.

The schema is JSON Schema draft-07, which Taplo (Even Better TOML) and other
TOML editors use for completion, hover text and checks as you type. It says
what one value looks like and which keys of a table go together; rules that
need more (``refresh_before`` above ``min_ttl``, an upstream's ``profile``
naming a configured profile, a zero duration) are the loader's alone, so
``token-sidecar check`` stays the last word.

This module is public, unlike its neighbours, because it is run with ``-m``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, assert_never

from sidecar.config._keys import DOCUMENT_KEYS
from sidecar.config._reader import DURATION_PATTERN, SIZE_PATTERN
from sidecar.config._spec import (
    Address,
    AtLeastOne,
    Choice,
    Duration,
    ExactlyOne,
    FilePath,
    Flag,
    Forbidden,
    HttpUrl,
    Integer,
    Key,
    KeyTable,
    Kind,
    Matches,
    NamedTables,
    OctalMode,
    RefreshWindow,
    Refused,
    Required,
    Rule,
    Size,
    StringTable,
    Subtable,
    Text,
    Together,
    Uids,
    When,
    WhenSet,
)

DRAFT = "http://json-schema.org/draft-07/schema#"

_NOT_BLANK = r"\S"
#: Above 0 % and below 100 %, as the loader reads ``refresh_before``.
_PERCENT = r"0*(?:[1-9][0-9]?(?:\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)%"
_PORT = r"(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_ADDRESS = rf"|(?:\[[0-9A-Fa-f:.]+\]|[^:]+):{_PORT}"
_LOOPBACK_HOST = r"(?:localhost|127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\])"
_HTTP_URL = rf"https://[^/?#\s].*|http://{_LOOPBACK_HOST}(?:[:/?#].*)?"
_OCTAL_MODE = r"|0?[0-7]{3}"


def config_schema(document: KeyTable = DOCUMENT_KEYS) -> dict[str, Any]:
    """The JSON Schema (draft-07) of a config file whose top level is ``document``."""
    return {"$schema": DRAFT, "title": document.title, **_table(document)}


def schema_text() -> str:
    """:func:`config_schema` as the text of ``docs/config.schema.json``."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def _whole(pattern: str) -> str:
    """``pattern`` anchored at both ends: JSON Schema patterns match anywhere."""
    return f"^(?:{pattern})$"


def _string(pattern: str) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern}


# --------------------------------------------------------------------------- tables and keys


def _table(table: KeyTable) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": table.description,
        "properties": {key.name: _key(key) for key in table.keys},
        "additionalProperties": False,
    }
    required = [name for rule in table.rules if isinstance(rule, Required) for name in rule.names]
    if required:
        schema["required"] = required
    constraints = [_rule(table, rule) for rule in table.rules if not isinstance(rule, Required)]
    if constraints:
        schema["allOf"] = constraints
    return schema


def _key(key: Key) -> dict[str, Any]:
    schema = {**_kind(key.kind), "description": key.description}
    if key.default is not None:
        schema["default"] = key.default
    return schema


def _kind(kind: Kind) -> dict[str, Any]:  # noqa: C901, PLR0911, PLR0912 - one case per kind
    duration = _string(_whole(DURATION_PATTERN))
    match kind:
        case Text(pattern=pattern):
            return _string(_NOT_BLANK if pattern is None else _whole(pattern))
        case FilePath():
            return _string(_NOT_BLANK)
        case Flag():
            return {"type": "boolean"}
        case Integer(minimum=minimum, maximum=maximum):
            integer: dict[str, Any] = {"type": "integer", "minimum": minimum}
            if maximum is not None:
                integer["maximum"] = maximum
            return integer
        case Duration(allow_zero=allow_zero):
            bound = "minimum" if allow_zero else "exclusiveMinimum"
            return {"anyOf": [duration, {"type": "number", bound: 0}]}
        case RefreshWindow():
            return {
                "anyOf": [
                    _string(_whole(_PERCENT)),
                    duration,
                    {"type": "number", "exclusiveMinimum": 0},
                ]
            }
        case Size():
            return {"anyOf": [_string(_whole(SIZE_PATTERN)), {"type": "integer", "minimum": 0}]}
        case Address():
            return _string(_whole(_ADDRESS))
        case HttpUrl():
            return _string(_whole(_HTTP_URL))
        case OctalMode():
            return _string(_whole(_OCTAL_MODE))
        case Choice(values=values):
            return {"type": "string", "enum": list(values)}
        case Uids():
            return {"type": "array", "items": {"type": "integer", "minimum": 0}}
        case StringTable():
            return _string_table(kind)
        case Subtable(table=table):
            return _table(table)
        case NamedTables(table=table, name_pattern=pattern, minimum=minimum):
            schema: dict[str, Any] = {
                "type": "object",
                "propertyNames": {"pattern": _whole(pattern)},
                "additionalProperties": _table(table),
            }
            if minimum:
                schema["minProperties"] = minimum
            return schema
        case Refused():
            return {"not": {}}
        case _:
            assert_never(kind)


def _string_table(kind: StringTable) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "string"}
    if kind.value_pattern is not None:
        value["pattern"] = _whole(kind.value_pattern)
    names: dict[str, Any] = {}
    if kind.name_pattern is not None:
        names["pattern"] = _whole(kind.name_pattern)
    if kind.reserved:
        names["not"] = {"enum": list(kind.reserved)}
    schema: dict[str, Any] = {"type": "object", "additionalProperties": value}
    if names:
        schema["propertyNames"] = names
    return schema


# --------------------------------------------------------------------------- rules


def _present(names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"required": [name]} for name in names]


def _rule(table: KeyTable, rule: Rule) -> dict[str, Any]:  # noqa: PLR0911 - one case per rule
    match rule:
        case Required(names=names):
            return {"required": list(names)}
        case ExactlyOne(names=names):
            return {"oneOf": _present(names)}
        case AtLeastOne(names=names):
            return {"anyOf": _present(names)}
        case Forbidden(names=names):
            return {"not": {"anyOf": _present(names)}}
        case Together(names=names):
            return {"dependencies": {name: [n for n in names if n != name] for name in names}}
        case Matches(name=name, pattern=pattern):
            return {"properties": {name: {"pattern": _whole(pattern)}}}
        case When():
            return _when(table, rule)
        case WhenSet(name=name, then=then):
            return {"if": {"required": [name]}, "then": _all(table, then)}
        case _:
            assert_never(rule)


def _when(table: KeyTable, rule: When) -> dict[str, Any]:
    condition: dict[str, Any] = {"properties": {rule.name: {"const": rule.value}}}
    if table[rule.name].default != rule.value:
        # Left out, the key has its default: only then does absence not match.
        condition["required"] = [rule.name]
    schema: dict[str, Any] = {"if": condition}
    if rule.then:
        schema["then"] = _all(table, rule.then)
    if rule.otherwise:
        schema["else"] = _all(table, rule.otherwise)
    return schema


def _all(table: KeyTable, rules: Sequence[Rule]) -> dict[str, Any]:
    if len(rules) == 1:
        return _rule(table, rules[0])
    return {"allOf": [_rule(table, rule) for rule in rules]}


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Print the schema, or write it to the file named on the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.config.schema",
        description="Write the JSON Schema of the token-sidecar config file.",
    )
    parser.add_argument("output", nargs="?", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    if args.output is None:
        sys.stdout.write(schema_text())
    else:
        Path(args.output).write_text(schema_text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
