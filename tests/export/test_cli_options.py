"""The CLI's options are generated from dataclass fields (bake.options.opt): their click
defaults are the fields' defaults, the interface matches its golden, and the commands stay
small."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from bake.options import default_of, is_absent, option_fields
from export.cli import main
from export.cli.options import FieldOption, build, options

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cli_options.json"
UPDATE = os.environ.get("STEERBAKE_UPDATE_GOLDEN") == "1"


def commands(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, f"{prefix}{name} ")
        else:
            yield prefix + name, cmd


def default_mismatches(cmd: click.Command) -> list[str]:
    """Each option field whose click default, parsed as `build` does, is not the field's
    default; and each options dataclass that click's defaults do not rebuild exactly."""
    bad = []
    given: dict[type, dict[str, Any]] = {}
    for p in cmd.params:
        if isinstance(p, FieldOption):
            assert p.name is not None
            given.setdefault(p.owner, {})[p.name] = p.default
    for cls, kwargs in given.items():
        required = False
        for f, o in option_fields(cls):
            want = default_of(f)
            if want is dataclasses.MISSING:
                required = True
                continue
            got = kwargs[f.name]
            if o.parse is not None and not is_absent(got):
                bad.append(f"{cls.__name__}.{f.name}: parsed option defaults to {got!r}")
            elif o.parse is None and (got != want or type(got) is not type(want)):
                bad.append(f"{cls.__name__}.{f.name}: click default {got!r}, field {want!r}")
        if not required and build(cls, kwargs) != cls():
            bad.append(f"{cls.__name__}: built from click's defaults != {cls.__name__}()")
    return bad


@pytest.mark.parametrize("name", [name for name, _ in commands()])
def test_click_defaults_are_the_field_defaults(name: str) -> None:
    cmd = dict(commands())[name]
    assert not default_mismatches(cmd)


@pytest.mark.parametrize("name", [name for name, _ in commands()])
def test_every_option_comes_from_a_field(name: str) -> None:
    """Arguments and -o/--output may be declared on a command; every other option is a
    dataclass field."""
    cmd = dict(commands())[name]
    direct = [
        p.opts
        for p in cmd.params
        if isinstance(p, click.Option) and not isinstance(p, FieldOption) and p.name != "help"
    ]
    assert all("--output" in opts for opts in direct), direct


def test_a_diverging_click_default_is_caught() -> None:
    from bake.runtime.sampling import SamplingOptions

    @click.command()
    @options(SamplingOptions)
    def cmd(**kw: Any) -> None: ...

    assert not default_mismatches(cmd)
    seed = next(p for p in cmd.params if p.name == "seed")
    seed.default = 1
    assert default_mismatches(cmd) == [
        "SamplingOptions.seed: click default 1, field 0",
        "SamplingOptions: built from click's defaults != SamplingOptions()",
    ]


def click_defaults(name: str) -> dict[str, Any]:
    cmd = dict(commands())[name]
    return {p.name: p.default for p in cmd.params if isinstance(p, FieldOption)}


def test_parse_maps_given_values_and_leaves_absent_ones_at_the_default() -> None:
    from bake.artifacts.tuning import TuneSettings
    from export.publish.job import ExportOptions

    given = click_defaults("tune") | {"layer_counts": "1,4", "alphas": ""}
    settings = build(TuneSettings, given)
    assert settings.layer_counts == (1, 4) and settings.alphas is None, "None: the ladder"
    given = click_defaults("export") | {"gguf": True, "gguf_types": "f16,q8_0"}
    export = build(ExportOptions, given)
    assert export.gguf is False and export.gguf_types == ("F16", "Q8_0")
    assert build(ExportOptions, click_defaults("export")) == ExportOptions()


# --------------------------------------------------------------------------- golden
def _type_name(t: click.ParamType) -> str:
    if isinstance(t, click.Path):
        return "PATH"
    if isinstance(t, click.Choice):
        return "CHOICE[" + "|".join(map(str, t.choices)) + "]"
    return repr(t)


def _default(p: click.Parameter) -> Any:
    """What the command receives when the parameter is absent, as JSON."""
    value = p.default
    if value is None or type(value).__name__ == "Sentinel":  # click >= 8.3: UNSET
        is_flag = getattr(p, "is_flag", False)
        return False if is_flag else ([] if p.multiple else None)
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def interface() -> dict[str, list[dict[str, Any]]]:
    return {
        name: [
            {
                "opts": [*p.opts, *p.secondary_opts],
                "kind": "option" if isinstance(p, click.Option) else "argument",
                "type": _type_name(p.type),
                "default": _default(p),
                "required": p.required,
                "multiple": p.multiple,
                "is_flag": getattr(p, "is_flag", False),
                "metavar": p.metavar,
            }
            for p in cmd.params
            if p.name != "help"
        ]
        for name, cmd in commands()
    }


def _dump(data: dict[str, list[dict[str, Any]]]) -> str:
    """One line per parameter."""
    blocks = [
        f" {json.dumps(name)}: [\n" + ",\n".join("  " + json.dumps(row) for row in rows) + "\n ]"
        for name, rows in data.items()
    ]
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def test_interface_matches_golden() -> None:
    live = interface()
    if UPDATE:
        GOLDEN.write_text(_dump(live))
    golden = json.loads(GOLDEN.read_text())
    assert sorted(live) == sorted(golden)
    for name in golden:
        assert live[name] == golden[name], (
            f"`steerbake {name}` changed its interface; if intended, rerun with "
            "STEERBAKE_UPDATE_GOLDEN=1 and review the diff of tests/golden/cli_options.json"
        )


def test_cli_package_is_small() -> None:
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "export" / "cli").glob("*.py"))
    assert lines <= 800, f"export/cli/ has {lines} lines"
