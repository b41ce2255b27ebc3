"""How a config key is declared: :class:`Key`, the kinds of value, the table rules.

Every table a config file may contain is one :class:`KeyTable` (declared in
:mod:`sidecar.config._keys`): its keys, each with a kind of value, a default
and a description, and the rules that tie keys together ("exactly one of
``auth0_domain`` and ``token_url``"). The readers accept exactly the keys of
their table and refuse the rest, and :mod:`sidecar.config.schema` turns the
same tables into the JSON Schema that TOML editors check a file with, so a key
declared here exists in both or in neither.

A kind says what a value looks like, not what it means: the readers still own
every rule that needs more than one value's shape (``refresh_before`` above
``min_ttl``, an upstream's profile being configured). The kinds that take a
``pattern`` take it unanchored, written for both Python's ``re`` and the
ECMA-262 dialect of JSON Schema (no look-around, no inline flags).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

#: A value as TOML writes it (TOML has no null: ``None`` is "no default").
TomlValue: TypeAlias = str | int | float | bool | list["TomlValue"] | dict[str, "TomlValue"]

# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Text:
    """A string that is not blank; with ``pattern``, one that matches it whole."""

    pattern: str | None = None


@dataclass(frozen=True)
class FilePath:
    """A file system path, used as written (relative to the working directory)."""


@dataclass(frozen=True)
class Flag:
    """``true`` or ``false``."""


@dataclass(frozen=True)
class Integer:
    """A TOML integer of at least ``minimum`` (and at most ``maximum``, when given)."""

    minimum: int
    maximum: int | None = None


@dataclass(frozen=True)
class Duration:
    """``"30s"``, ``"1h30m"``, ``"500ms"`` or a number of seconds; above zero.

    With ``allow_zero``, zero too (``"0s"`` or ``0``: "never", "no margin").
    """

    allow_zero: bool = False


@dataclass(frozen=True)
class Size:
    """``"64KiB"``, ``"1MiB"``, ``"500KB"`` or a number of bytes."""


@dataclass(frozen=True)
class RefreshWindow:
    """A duration, or a share of the token lifetime written as a percentage (``"20%"``)."""


@dataclass(frozen=True)
class Address:
    """``"HOST:PORT"`` (IPv6 in brackets), or ``""`` to switch the listener off."""


@dataclass(frozen=True)
class HttpUrl:
    """An absolute ``https`` URL, or plain ``http`` to a loopback host."""


@dataclass(frozen=True)
class OctalMode:
    """A file mode written as octal digits in a string (``"0660"``), or ``""`` for the default."""


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Uids:
    """A list of user ids (integers of 0 or more)."""


@dataclass(frozen=True)
class StringTable:
    """An inline table of strings; names match ``name_pattern`` and are not ``reserved``."""

    name_pattern: str | None = None
    reserved: tuple[str, ...] = ()
    value_pattern: str | None = None


@dataclass(frozen=True)
class Subtable:
    """A nested table with keys of its own (``[profiles.NAME.backoff]``)."""

    table: KeyTable


@dataclass(frozen=True)
class NamedTables:
    """Tables under names the user chooses (``[profiles.NAME]``), at least ``minimum`` of them."""

    table: KeyTable
    name_pattern: str
    minimum: int = 0


@dataclass(frozen=True)
class Refused:
    """A key that is known but refused whatever its value (reserved for a later version)."""


#: What a key's value may be.
Kind: TypeAlias = (
    Text
    | FilePath
    | Flag
    | Integer
    | Duration
    | Size
    | RefreshWindow
    | Address
    | HttpUrl
    | OctalMode
    | Choice
    | Uids
    | StringTable
    | Subtable
    | NamedTables
    | Refused
)


@dataclass(frozen=True)
class Key:
    """One config key: its name, kind of value, description and default (as TOML writes it).

    ``default`` is None when the key has none: leaving it out then means what
    the description says (a derived value, "not sent", "no check"). Every
    argument is required, ``default`` by keyword, so a key cannot be declared
    without saying what it is for and what leaving it out does.
    """

    name: str
    kind: Kind
    description: str
    default: TomlValue | None = field(kw_only=True)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Required:
    """Each of ``names`` must be set."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class ExactlyOne:
    """Exactly one of ``names`` must be set."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class AtLeastOne:
    """At least one of ``names`` must be set."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Forbidden:
    """None of ``names`` may be set."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Together:
    """Either all of ``names`` are set or none is."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Matches:
    """The value of ``name``, when set, must match ``pattern`` whole (see the module docstring)."""

    name: str
    pattern: str


@dataclass(frozen=True)
class When:
    """Rules that apply when ``name`` has ``value`` (``then``) and when it has not (``otherwise``).

    A key left out has its default, so a ``value`` equal to the default
    includes the key's absence.
    """

    name: str
    value: str | bool
    then: tuple[Rule, ...] = ()
    otherwise: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class WhenSet:
    """Rules that apply when ``name`` is set, whatever its value.

    ``persist_file`` set requires ``key_file``; the TLS files require a ``rediss://`` URL.
    """

    name: str
    then: tuple[Rule, ...]


#: A constraint between the keys of one table.
Rule: TypeAlias = (
    Required | ExactlyOne | AtLeastOne | Forbidden | Together | Matches | When | WhenSet
)


def rule_names(rule: Rule) -> Iterator[str]:
    """Every key name ``rule`` refers to, nested rules included."""
    if isinstance(rule, Matches):
        yield rule.name
    elif isinstance(rule, When):
        yield rule.name
        for inner in (*rule.then, *rule.otherwise):
            yield from rule_names(inner)
    elif isinstance(rule, WhenSet):
        yield rule.name
        for inner in rule.then:
            yield from rule_names(inner)
    else:
        yield from rule.names


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class KeyTable:
    """The keys one config table accepts, and the rules between them.

    Invariants (checked when the table is made): key names are unique, and
    rules name only keys of this table.
    """

    title: str
    description: str
    keys: tuple[Key, ...]
    rules: tuple[Rule, ...] = ()
    _by_name: dict[str, Key] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {key.name: key for key in self.keys}
        if len(by_name) != len(self.keys):
            raise ValueError(f"{self.title}: a key is declared twice")
        unknown = {name for rule in self.rules for name in rule_names(rule)} - by_name.keys()
        if unknown:
            raise ValueError(f"{self.title}: rules name undeclared keys {sorted(unknown)}")
        object.__setattr__(self, "_by_name", by_name)

    @property
    def names(self) -> tuple[str, ...]:
        """The accepted key names, in declaration order."""
        return tuple(self._by_name)

    def __getitem__(self, name: str) -> Key:
        return self._by_name[name]
