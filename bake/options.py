"""Command-line options, declared once: on the dataclass field that holds the value.

`opt(default, help, ...)` makes a dataclass field that is also one `steerbake` option: its
flags (default: `--field-name`), help, metavar, choices and default live in the field, and
its type is the field's annotation (`X | None` -> X; a bool is a flag; `tuple[X, ...]` with
`multiple`). `export/cli/options.py` turns such fields into click options; nothing here
imports click, so bake stays usable without the CLI.

A field whose command-line form is text but whose value is typed (`--alphas 0.05,0.1`, a
lexicon path, `--no-gguf` for `gguf=False`) carries `parse`: the option's default on the
command line is then "absent" (None, or False for a flag), an absent or empty value leaves
the field's default, and any other value is `parse(value)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

OVERWRITE_HELP = "Replace an existing output."
_KEY = "steerbake.option"


@dataclass(frozen=True)
class Opt:
    help: str | None = None
    flags: tuple[str, ...] | None = None  # None: ("--field-name",)
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    case_sensitive: bool = True
    parse: Callable[[Any], Any] | None = None
    multiple: bool = False
    show_default: bool | None = None  # None: shown unless None, False or ()


def opt(
    default: Any = MISSING,
    help: str | None = None,
    *,
    factory: Callable[[], Any] | None = None,
    flags: tuple[str, ...] | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    case_sensitive: bool = True,
    parse: Callable[[Any], Any] | None = None,
    multiple: bool = False,
    show_default: bool | None = None,
) -> Any:
    """A dataclass field that is a command-line option (no default: a required option)."""
    meta = {
        _KEY: Opt(
            help=help,
            flags=flags,
            metavar=metavar,
            choices=choices,
            case_sensitive=case_sensitive,
            parse=parse,
            multiple=multiple,
            show_default=show_default,
        )
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def option_fields(cls: type) -> list[tuple[Field[Any], Opt]]:
    """cls's fields made with opt(), in declaration order."""
    return [(f, f.metadata[_KEY]) for f in fields(cls) if _KEY in f.metadata]


def is_absent(value: Any) -> bool:
    """An option value that leaves a parsed field at its default."""
    return value is None or value is False or value == ""


def default_of(f: Field[Any]) -> Any:
    """The field's default value (MISSING for a required option)."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default
