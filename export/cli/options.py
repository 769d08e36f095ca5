"""Click options generated from dataclass fields declared with bake.options.opt(), and the
dataclasses built back from click's values: each option is declared once, on its field."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any, TypeVar

import click

from bake.options import Opt, default_of, is_absent, option_fields

PATH = click.Path(path_type=Path)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class FieldOption(click.Option):
    """A click option made from the field of `owner` that has the option's name."""

    def __init__(self, param_decls: list[str], *, owner: type, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.owner = owner


def value_type(hint: Any) -> Any:
    """The type of one value: X from `X | None` and from `tuple[X, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union) and len(args) == 1:
        return value_type(args[0])
    if origin is tuple:
        return args[0]
    return hint


def click_default(f: Field[Any], o: Opt, flag: bool) -> Any:
    """The option's default on the command line: the field's, or absent for a parsed one."""
    if o.parse is not None:
        return False if flag else None
    return default_of(f)


def _option(cls: type, f: Field[Any], o: Opt, hint: Any) -> tuple[list[str], dict[str, Any]]:
    kind = value_type(hint)
    flag = kind is bool
    attrs: dict[str, Any] = {
        "cls": FieldOption,
        "owner": cls,
        "help": o.help,
        "metavar": o.metavar,
        "multiple": o.multiple,
    }
    default = click_default(f, o, flag)
    if default is MISSING:
        attrs["required"] = True
        default = None
    else:
        attrs["default"] = default
    if flag:
        attrs["is_flag"] = True
    elif o.choices:
        attrs["type"] = click.Choice(o.choices, case_sensitive=o.case_sensitive)
    else:
        attrs["type"] = str if o.parse else PATH if kind is Path else kind
    shown = not (default is None or default is False or default == ())
    attrs["show_default"] = shown if o.show_default is None else o.show_default
    flags = list(o.flags or ("--" + f.name.replace("_", "-"),))
    return [*flags, f.name], attrs


def field_options(*sources: type | tuple[Any, ...]) -> list[tuple[list[str], dict[str, Any]]]:
    """(declarations, attributes) of the click options for `sources`, in order: a
    dataclass (its option fields not placed by an earlier source) or (dataclass, *names)."""
    placed: set[tuple[type, str]] = set()
    out = []
    for source in sources:
        cls, *names = source if isinstance(source, tuple) else (source,)
        found = {f.name: (f, o) for f, o in option_fields(cls)}
        hints = typing.get_type_hints(cls)
        for name in names or [n for n in found if (cls, n) not in placed]:
            placed.add((cls, name))
            out.append(_option(cls, *found[name], hints[name]))
    return out


def options(*sources: type | tuple[Any, ...]) -> Callable[[F], F]:
    """Decorator: the click options of `sources` (see field_options), in that order."""

    def decorate(fn: F) -> F:
        for decls, attrs in reversed(field_options(*sources)):
            fn = click.option(*decls, **attrs)(fn)
        return fn

    return decorate


def build(cls: type[T], kwargs: dict[str, Any]) -> T:
    """cls from click's values; every option field of cls must be among them."""
    values = {}
    for f, o in option_fields(cls):
        value = kwargs[f.name]
        if o.parse is None:
            values[f.name] = value
        elif not is_absent(value):
            values[f.name] = o.parse(value)
    return cls(**values)


def threaded(fn: F) -> F:
    """The --threads option (bake.runtime.threads), applied before the command runs; put it
    last among the decorators so that the option is listed last."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from bake.runtime.threads import ThreadOptions, use_threads

        use_threads(build(ThreadOptions, kwargs).threads)
        kwargs.pop("threads")
        return fn(*args, **kwargs)

    from bake.runtime.threads import ThreadOptions

    return options(ThreadOptions)(run)  # type: ignore[return-value]


def output(help: str | None = None) -> Callable[[F], F]:
    """The required -o/--output path."""
    return click.option("-o", "--output", type=PATH, required=True, help=help)


def write_json(path: Path | None, data: Any) -> None:
    """A JSON report, written atomically (nothing when no path was given)."""
    if path:
        from bake.files.fileio import atomic_write_path
        from bake.files.jsonio import dumps

        with atomic_write_path(path) as tmp:
            tmp.write_text(dumps(data, indent=2) + "\n")
