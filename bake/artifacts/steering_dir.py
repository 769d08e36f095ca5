"""The `steering/` folder every baked output carries: the plan, a copy of its vector file
(the plan pointing at the copy) and the record of what the bake did (bake.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bake.artifacts.plan import Plan
from bake.files.fileio import (
    fast_copy,
)

STEERING_DIR = "steering"


def _write_steering_dir(plan: Plan, dest: Path, bake_info: dict[str, Any]) -> None:
    """steering/: the plan, its vector file and what the bake did (provenance)."""
    from bake import __version__

    folder = dest / STEERING_DIR
    folder.mkdir()
    vectors_copy = folder / "vectors.safetensors"
    fast_copy(plan.vectors_file, vectors_copy)
    local = Plan(**{**plan.__dict__, "vectors_path": str(vectors_copy), "base_dir": Path("/")})
    local.save(folder / "plan.json")
    info = {
        "steerbake_version": __version__,
        "layers": plan.layers,
        "alpha": plan.alpha,
        **bake_info,
    }
    (folder / "bake.json").write_text(json.dumps(info, indent=2) + "\n")


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
