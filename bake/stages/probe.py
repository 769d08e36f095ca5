"""`steerbake probe`: fit the linear probe of probe-gated steering from activations of
prompts the model should refuse and prompts it should answer (each an ACTS folder written
by `collect` at the last prompt token).

Per layer the probe is a ridge classifier (bake.stages.geometry: refuse +1, answer -1,
each class weighing one half); its k-fold cross-validated accuracy picks the layer L_p
(the best, the lowest on a tie) unless one is given. The probe file records every layer's
accuracy and the chosen one's 95% Wilson interval; with held-out folders, the accuracy
there too. At run time it gates a plan per prompt (bake.runtime.gated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.activations import ActivationSource
from bake.artifacts.probe import Probe
from bake.errors import InputError
from bake.options import opt
from bake.stages.geometry import RidgeClassifier, cross_validated_accuracy
from bake.stats import wilson


@dataclass(frozen=True)
class ProbeOptions:
    """Which activations train and test the probe, and how it is fitted."""

    refuse: tuple[Path, ...] = opt(
        help="ACTS folder of prompts the model should refuse (repeatable).", multiple=True
    )
    answer: tuple[Path, ...] = opt(
        help="ACTS folder of prompts the model should answer (repeatable).", multiple=True
    )
    test_refuse: tuple[Path, ...] = opt(
        (), "Held-out ACTS folder of prompts to refuse, to report accuracy on.", multiple=True
    )
    test_answer: tuple[Path, ...] = opt(
        (), "Held-out ACTS folder of prompts to answer, to report accuracy on.", multiple=True
    )
    layer: int | None = opt(None, "Read the probe at this block [default: the best by CV].")
    lam: float = opt(0.1, "Ridge lambda, relative to the mean variance.", flags=("--lambda",))
    folds: int = opt(5, "Folds of the cross-validated accuracy.")
    seed: int = opt(0, "Seed of the folds.")


def _common(sources: Sequence[ActivationSource]) -> tuple[list[int], str | None]:
    """The layers every source holds, and their shared system message; every source must
    be of one model and taken at the last prompt token."""
    first = sources[0]
    systems = set()
    for acts in sources:
        acts.fingerprint.check(first.fingerprint, "the activations")
        if acts.position != "last":
            raise InputError(
                f"the probe reads the last prompt token, but activations were collected at "
                f"position {acts.position!r}; collect with --position last"
            )
        systems.add(getattr(acts, "index", {}).get("system"))
    if len(systems) > 1:
        raise InputError(
            "the activation folders were collected with different system messages; collect "
            "them all with the same --system"
        )
    layers = sorted(set.intersection(*(set(a.layers) for a in sources)))
    if not layers:
        raise InputError("the activation folders share no layer; collect the same layers")
    return layers, systems.pop()


def _rows(
    refuse: Sequence[ActivationSource], answer: Sequence[ActivationSource], layer: int
) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d) and y (n,) in {+1 refuse, -1 answer} at one layer."""
    xs = [a.layer(layer) for a in (*refuse, *answer)]
    y = np.concatenate(
        [np.full(len(a.ids), 1.0) for a in refuse] + [np.full(len(a.ids), -1.0) for a in answer]
    )
    return np.concatenate(xs).astype(np.float64), y


def fit_probe(
    refuse: Sequence[ActivationSource],
    answer: Sequence[ActivationSource],
    *,
    layer: int | None = None,
    lam: float = 0.1,
    folds: int = 5,
    seed: int = 0,
) -> Probe:
    """The probe at `layer` (default: the best cross-validated layer); its provenance holds
    every candidate layer's accuracy."""
    if not refuse or not answer:
        raise InputError("a probe needs prompts to refuse and to answer: --refuse and --answer")
    if not lam > 0:
        raise InputError(f"--lambda must be > 0, got {lam}")
    layers, system = _common([*refuse, *answer])
    if layer is not None and layer not in layers:
        raise InputError(f"layer {layer} is not in every activation folder; they share {layers}")
    accuracy: dict[int, tuple[int, int]] = {}
    for candidate in layers if layer is None else [layer]:
        x, y = _rows(refuse, answer, candidate)
        accuracy[candidate] = cross_validated_accuracy(x, y, folds, seed, lam)
    chosen = layer if layer is not None else max(layers, key=lambda k: (accuracy[k][0], -k))
    x, y = _rows(refuse, answer, chosen)
    clf = RidgeClassifier(x, y, lam)
    correct, n = accuracy[chosen]
    return Probe(
        layer=chosen,
        weight=clf.weight.astype(np.float32),
        bias=float(clf.bias),
        fingerprint=refuse[0].fingerprint,
        system=system,
        provenance={
            "refuse_rows": int((y > 0).sum()),
            "answer_rows": int((y < 0).sum()),
            "lambda": lam,
            "folds": folds,
            "seed": seed,
            "cv_accuracy": {str(k): c / m for k, (c, m) in accuracy.items()},
            "chosen": {"layer": chosen, **_accuracy(correct, n)},
        },
    )


def _accuracy(correct: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(correct, n)
    return {"accuracy": correct / n, "correct": correct, "n": n, "wilson95": [lo, hi]}


def probe_accuracy(
    probe: Probe, refuse: Sequence[ActivationSource], answer: Sequence[ActivationSource]
) -> dict[str, Any]:
    """The probe's accuracy on other activations (held out), with a 95% Wilson interval and
    the accuracy within each class."""
    _common([*refuse, *answer])
    x, y = _rows(refuse, answer, probe.layer)
    said_refuse = probe.decision(x) > probe.threshold
    right = said_refuse == (y > 0)
    return {
        **_accuracy(int(right.sum()), len(y)),
        "refuse_recall": float(right[y > 0].mean()),
        "answer_recall": float(right[y < 0].mean()),
    }


def run_probe(output: Path, opts: ProbeOptions) -> Probe:
    """`steerbake probe`: fit on --refuse/--answer, test on --test-*, write the probe file."""
    from bake.artifacts.activations import ActivationSet

    def open_all(folders: Sequence[Path]) -> list[ActivationSet]:
        return [ActivationSet.open(Path(f)) for f in folders]

    probe = fit_probe(
        open_all(opts.refuse),
        open_all(opts.answer),
        layer=opts.layer,
        lam=opts.lam,
        folds=opts.folds,
        seed=opts.seed,
    )
    probe.provenance["sources"] = {
        "refuse": [str(f) for f in opts.refuse],
        "answer": [str(f) for f in opts.answer],
    }
    if opts.test_refuse or opts.test_answer:
        if not (opts.test_refuse and opts.test_answer):
            raise InputError("give both --test-refuse and --test-answer, or neither")
        probe.provenance["heldout"] = probe_accuracy(
            probe, open_all(opts.test_refuse), open_all(opts.test_answer)
        )
    probe.save(Path(output))
    return probe


def render_probe(probe: Probe) -> str:
    """Per layer the cross-validated accuracy, then the chosen layer (and held-out)."""
    p = probe.provenance
    lines = [f"{'layer':>5}  {'cv accuracy':>11}"]
    for layer, acc in p["cv_accuracy"].items():
        mark = "  <- probe" if int(layer) == probe.layer else ""
        lines.append(f"{layer:>5}  {acc:>11.3f}{mark}")
    c = p["chosen"]
    lines.append(
        f"probe at layer {probe.layer}: cv accuracy {c['accuracy']:.3f} "
        f"(95% {c['wilson95'][0]:.3f}-{c['wilson95'][1]:.3f}, n {c['n']})"
    )
    if "heldout" in p:
        h = p["heldout"]
        lines.append(
            f"held out: accuracy {h['accuracy']:.3f} (95% {h['wilson95'][0]:.3f}-"
            f"{h['wilson95'][1]:.3f}, n {h['n']}); refuse recall {h['refuse_recall']:.3f}, "
            f"answer recall {h['answer_recall']:.3f}"
        )
    return "\n".join(lines)
