"""matplotlib for the reports' plots, headless; None where it is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt: Any, fig: Any, folder: Path, name: str) -> str:
    """Lay out, write folder/name (PNG, 110 dpi) and close `fig`; returns `name`."""
    fig.tight_layout()
    fig.savefig(Path(folder) / name, dpi=110)
    plt.close(fig)
    return name
