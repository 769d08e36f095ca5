"""The tuning report: JSON, a Markdown table and two PNG plots
(refusal vs alpha per layer count; refusal vs KL with the chosen point marked)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bake.errors import InputError
from bake.files.jsonio import dumps, nan_if_none
from bake.options import opt


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0%}"


def render_table(result: TuneResult) -> str:
    goal = result.settings.goal
    primary, guard = ("sensitive", "harmful") if goal == "remove" else ("target", "benign")
    base = result.baseline
    benign = " benign refusal |" if goal == "remove" else ""
    unsteered = (
        f"unsteered: {primary} refusal {base[primary]:.0%}, {guard} refusal {base[guard]:.0%}"
    )
    if goal == "remove":
        unsteered += f", benign refusal {base['benign']:.0%}"
    lines = [
        unsteered,
        "",
        f"| layers | alpha | {primary} refusal | {guard} refusal |{benign} benign KL | ok |",
        "|---|---|---|---|---|" + ("---|" if benign else "") + "---|",
    ]
    for t in result.trials:
        mark = " **chosen**" if t is result.best else ""
        cells = f" {_fmt(t.benign)} |" if benign else ""
        lines.append(
            f"| {len(t.layers)}: {','.join(map(str, t.layers))} | {t.alpha:+.3f} | "
            f"{_fmt(t.primary)} | {_fmt(t.guard)} |{cells} {t.kl:.4f} | "
            f"{'yes' if t.feasible else 'no: ' + t.reason}{mark} |"
        )
    return "\n".join(lines)


def _plots(result: TuneResult, folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    goal = result.settings.goal
    label = "sensitive" if goal == "remove" else "target"
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({t.n_layers for t in result.trials}):
        ts = [t for t in result.trials if t.n_layers == n and not math.isnan(t.primary)]
        ax.plot([t.alpha for t in ts], [t.primary for t in ts], marker="o", label=f"{n} layers")
    ax.set(xlabel="alpha", ylabel=f"{label} refusal rate", title="Refusal vs alpha")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "refusal_vs_alpha.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = [t for t in result.trials if not math.isnan(t.primary)]
    ax.scatter(
        [t.kl for t in ts],
        [t.primary for t in ts],
        c=["tab:blue" if t.feasible else "tab:gray" for t in ts],
    )
    if result.best:
        ax.scatter(
            [result.best.kl],
            [result.best.primary],
            s=160,
            facecolors="none",
            edgecolors="red",
            linewidths=2,
            label="chosen",
        )
        ax.legend()
    ax.set(
        xlabel="benign KL(base || steered)",
        ylabel=f"{label} refusal rate",
        title="Refusal vs KL (grey: a guard broke)",
    )
    fig.tight_layout()
    fig.savefig(folder / "refusal_vs_kl.png", dpi=100)
    plt.close(fig)
    return ["refusal_vs_alpha.png", "refusal_vs_kl.png"]


def write_report(result: TuneResult, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tuning_report.json").write_text(dumps(result.to_json(), indent=2) + "\n")
    plots = _plots(result, folder)
    images = "".join(f"\n![{p}]({p})\n" for p in plots)
    (folder / "tuning_report.md").write_text(f"# Tuning report\n\n{render_table(result)}\n{images}")
    return folder


ALPHA_MAGNITUDES = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7)


def parse_ints(text: str) -> tuple[int, ...]:
    """--layer-counts: '1,4,8' -> (1, 4, 8), each 1 or more."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise InputError(f"--layer-counts {text!r}: give numbers of layers, e.g. 1,4,8")
    return counts


def parse_alphas(text: str) -> tuple[float, ...]:
    """--alphas: '0.05,0.1' -> (0.05, 0.1), magnitudes (the goal gives the sign)."""
    try:
        return tuple(abs(float(x)) for x in text.split(","))
    except ValueError:
        raise InputError(f"--alphas {text!r}: give alpha magnitudes, e.g. 0.05,0.1,0.2") from None


@dataclass
class TuneSettings:
    goal: str = opt("remove", choices=("remove", "induce"))
    harmful_tolerance: float = opt(  # absolute share
        0.1, "Allowed drop of harmful refusal (share of prompts)."
    )
    benign_tolerance: float = opt(  # both goals
        0.1,
        "Allowed rise of refusal on the benign set (judged answers; corrupted text counts).",
    )
    kl_max: float = opt(0.1, "Bound on benign KL.")  # KL(base || steered)
    drop_deepest: float = 0.2  # share of the deepest layers never steered
    layer_counts: tuple[int, ...] | None = opt(  # default 1, 2, 4, 8, ... and all
        None, "Numbers of layers to try, e.g. 1,4,8.", parse=parse_ints
    )
    alphas: tuple[float, ...] = opt(  # magnitudes; the goal gives the sign
        ALPHA_MAGNITUDES, "Alpha magnitudes to try, e.g. 0.05,0.1,0.2.", parse=parse_alphas
    )
    refine: int = 3  # bisection steps where a guard broke between two grid points

    def check(self) -> None:
        if self.goal not in ("remove", "induce"):
            raise InputError(f"--goal must be remove or induce, not {self.goal!r}")
        if not self.alphas or any(not (math.isfinite(a) and a > 0) for a in self.alphas):
            raise InputError("--alphas must be positive magnitudes, e.g. 0.05,0.1,0.2")
        if self.refine < 0:
            raise InputError(f"--refine must be >= 0, got {self.refine}")


@dataclass
class Trial:
    layers: list[int]
    alpha: float
    primary: float  # refusal on the sensitive (remove) or target (induce) set
    guard: float  # refusal on harmful (remove) or benign (induce)
    kl: float
    feasible: bool
    reason: str = ""
    benign: float = math.nan  # remove: refusal on the benign set (induce: that is `guard`)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Trial:
        """A trial read back from the cache or a report: null rates (NaN when measured:
        a trial the KL guard stopped) are NaN again."""
        rates = {k: nan_if_none(row.get(k)) for k in ("primary", "guard", "kl", "benign")}
        return cls(**{**row, **rates})


@dataclass
class TuneResult:
    settings: TuneSettings
    ranked: list[int]
    baseline: dict[str, float]
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "ranked_layers": self.ranked,
            "baseline": self.baseline,
            "trials": [asdict(t) for t in self.trials],
            "best": asdict(self.best) if self.best else None,
        }


class _Cache:
    """Trials keyed by a hash of everything they depend on; appended as they finish."""

    def __init__(self, path: Path | None, context: dict[str, Any]) -> None:
        self.path, self.context = path, context
        self.rows: dict[str, dict[str, Any]] = {}
        if path and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = dict(row["trial"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line cut short by an interruption

    def key(self, layers: list[int], alpha: float) -> str:
        blob = json.dumps({**self.context, "layers": layers, "alpha": alpha}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, layers: list[int], alpha: float) -> Trial | None:
        row = self.rows.get(self.key(layers, alpha))
        if not row:
            return None
        try:
            return Trial.from_json(row)
        except (TypeError, ValueError):
            return None  # a row of another version: measured again

    def put(self, trial: Trial) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, 2)
            if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                f.write(b"\n")  # end a line an interruption cut short
        with open(self.path, "a") as f:
            f.write(
                dumps({"key": self.key(trial.layers, trial.alpha), "trial": asdict(trial)}) + "\n"
            )
