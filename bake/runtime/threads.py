"""How many CPU threads torch and llama.cpp use: `--threads N`, else $STEERBAKE_THREADS,
else every core this process may run on.

Too many threads are worse than too few: on a machine whose cores are already busy, torch's
and llama.cpp's worker threads spin against each other (FACTS: generation ran 8x slower
with torch's default 2 threads beside another busy process than with 1). Set N to the cores
that are actually free; latency-bound tiny models often run fastest on 1.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from bake.errors import InputError
from bake.options import opt

ENV = "STEERBAKE_THREADS"
_chosen: int | None = None


def machine_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _from_env() -> int | None:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{ENV}={text!r}: set it to a number of threads, 1 or more")
    return int(text)


def threads() -> int:
    """The thread count in force: the chosen one, $STEERBAKE_THREADS, or every core."""
    return _chosen or _from_env() or machine_threads()


def use_threads(n: int | None) -> int:
    """Choose the thread count for this process (None: $STEERBAKE_THREADS or every core):
    torch's intra-op pool now if torch is loaded, else when it loads (OMP_NUM_THREADS);
    llama.cpp runtimes read threads() when they start."""
    global _chosen
    if n is not None and n < 1:
        raise InputError(f"--threads {n}: use 1 or more")
    _chosen = n or _from_env() or machine_threads()
    os.environ["OMP_NUM_THREADS"] = str(_chosen)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_chosen)
    return _chosen


def apply_torch_threads() -> None:
    """Give torch the thread count in force (called where a model is loaded)."""
    import torch

    if torch.get_num_threads() != threads():
        torch.set_num_threads(threads())


@dataclass
class ThreadOptions:
    """The --threads option of every command that runs torch or llama.cpp."""

    threads: int | None = opt(
        None,
        f"CPU threads for torch and llama.cpp [default: ${ENV}, else every core].",
        metavar="N",
    )
