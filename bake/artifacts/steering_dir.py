"""The `steering/` folder every baked output carries: the plan, a copy of its vector file
(the plan pointing at the copy) and the record of what the bake did (bake.json)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.files.fileio import fast_copy
from bake.files.jsonio import dumps

if TYPE_CHECKING:
    from bake.artifacts.steering import Steering

STEERING_DIR = "steering"
PLAN_FILE = "plan.json"
VECTORS_FILE = "vectors.safetensors"
BAKE_RECORD = "bake.json"


def write_plan_copy(steering: Steering, folder: Path) -> None:
    """folder/plan.json + vectors.safetensors, the plan pointing at its local copy."""
    folder.mkdir(exist_ok=True)
    vectors_copy = folder / VECTORS_FILE
    fast_copy(steering.vectors_file, vectors_copy)
    local = replace(steering.plan, vectors_path=str(vectors_copy), base_dir=Path("/"))
    local.save(folder / PLAN_FILE)


def write_steering_dir(steering: Steering, dest: Path, bake_info: dict[str, Any]) -> None:
    """dest/steering/: the plan, its vector file and what the bake did (provenance)."""
    from bake import __version__

    folder = dest / STEERING_DIR
    folder.mkdir()
    write_plan_copy(steering, folder)
    info = {
        "steerbake_version": __version__,
        "layers": steering.layers,
        "alpha": steering.plan.alpha,
        **bake_info,
    }
    (folder / BAKE_RECORD).write_text(dumps(info, indent=2) + "\n")


def steering_dir_files() -> list[str]:
    """What write_steering_dir writes, relative to the output folder."""
    return [f"{STEERING_DIR}/{name}" for name in (PLAN_FILE, VECTORS_FILE, BAKE_RECORD)]


def file_sizes(folder: Path) -> dict[str, int]:
    """relative path -> size of every file below `folder`."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
