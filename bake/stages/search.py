"""What one `tune` search holds once: the model, the tuning sets, their unsteered answers
and judgements, the refusal openings, the proxy rows (bake.runtime.proxy) and the
activations the vector options are fitted on. `proxy` measures a candidate by forward
passes (stage 1), `confirm` by generating and judging (stage 2); both go through the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from bake.artifacts.prompts import Prompt
from bake.artifacts.steering import Steering
from bake.artifacts.tuning import (
    Candidate,
    Confirmed,
    Proxy,
    TuneCache,
    TuneSettings,
    predicted_rate,
)
from bake.runtime.hooks import hooked
from bake.runtime.proxy import ScoredSet, kl_set, refusal_openings, score, scored_set
from bake.stages.measure import Measurer, SetResult, measure_refusal

KL_SET = "__kl__"  # the benign prompts alone, for the KL at the first answer position
REPLAY_TOLERANCE = {"float32": 1e-3, "float64": 1e-6}  # x logit scale; half precision: 3e-2


class Search:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        sets: dict[str, list[Prompt]],
        m: Measurer,
        settings: TuneSettings,
        cache: TuneCache,
        starts: Sequence[int],
        progress: bool = False,
    ) -> None:
        self.model, self.tok, self.sets, self.m, self.s = model, tokenizer, sets, m, settings
        self.cache, self.progress = cache, progress
        self.unsteered = self._unsteered()
        self.labels = {n: labels_of(r) for n, r in self.unsteered.items()}
        self.broken0 = {n: sum(broken_of(r)) for n, r in self.unsteered.items()}
        self.openings = self._openings()
        self.measure = "greedy margin" if m.sampling.greedy else "opening probability"
        self.rows = self._rows(starts)
        self.unsteered_proxy = score(self.rows, KL_SET, None, self.model, self.measure)

    def _unsteered(self) -> dict[str, SetResult]:
        """The unsteered answers and judgements of every set (through the cache)."""
        row = self.cache.get("baseline")
        if row is not None:
            return {
                n: SetResult(**{**r, "token_ids": [tuple(t) for t in r["token_ids"]]})
                for n, r in row.items()
            }
        got = {
            n: measure_refusal(self.model, self.tok, n, ps, self.m, self.progress)
            for n, ps in self.sets.items()
        }
        self.cache.put("baseline", None, {n: asdict(r) for n, r in got.items()})
        return got

    def _openings(self) -> dict[str, list[tuple[int, ...]]]:
        """Per proxy set, the openings of its own refused answers (not broken ones); a set
        with none takes those of every set's refused answers (then the fallback phrases)."""

        def refused(results: list[SetResult]) -> list[tuple[int, ...]]:
            return [
                ids
                for r in results
                for ids, label, bad in zip(r.token_ids, labels_of(r), broken_of(r), strict=True)
                if label and not bad
            ]

        every = refused(list(self.unsteered.values()))
        out = {}
        for name in (self.s.primary, self.s.guard):
            own = refused([self.unsteered[name]])
            out[name] = refusal_openings(self.tok, own or every)
        return out

    def _rows(self, starts: Sequence[int]) -> dict[str, ScoredSet]:
        texts = {n: [p.text for p in ps] for n, ps in self.sets.items()}
        system = self.m.sampling.system
        rows = {
            name: scored_set(
                self.model, self.tok, texts[name], self.openings[name], system=system, starts=starts
            )
            for name in (self.s.primary, self.s.guard)
        }
        answers = self.unsteered["benign"].token_ids
        rows[KL_SET] = kl_set(
            self.model, self.tok, texts["benign"], answers, system=system, starts=starts
        )
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        scale = float(rows[KL_SET].replay.base.abs().max())
        rows[KL_SET].replay.check(REPLAY_TOLERANCE.get(dtype, 3e-2) * max(scale, 1.0))
        return rows

    @property
    def baseline(self) -> dict[str, float]:
        return {n: r.refusal_rate for n, r in self.unsteered.items()}

    def proxy_baseline(self) -> dict[str, float]:
        return self.unsteered_proxy.refusal

    def predicted_baseline(self) -> dict[str, float]:
        """Per proxy set, the unsteered refusal rate the proxy predicts (predicted_rate)."""
        got, greedy = self.unsteered_proxy, self.m.sampling.greedy
        return {n: predicted_rate(m, got.per_prompt[n], greedy) for n, m in got.refusal.items()}

    def opening_texts(self) -> dict[str, list[str]]:
        return {n: [str(self.tok.decode(list(o))) for o in ops] for n, ops in self.openings.items()}

    # ----------------------------------------------------------------- stage 1
    def proxy(self, steering: Steering, c: Candidate) -> Proxy:
        row = self.cache.get("proxy", c)
        if row is not None:
            return Proxy.from_json(row)
        got = score(self.rows, KL_SET, steering, self.model, self.measure)
        p = Proxy(c, got.refusal, got.kl, got.drift, got.per_prompt)
        self.cache.put("proxy", c, p.to_json())
        return p

    # ----------------------------------------------------------------- stage 2
    def confirm(self, steering: Steering, c: Candidate, kl: float) -> Confirmed:
        row = self.cache.get("confirm", c)
        if row is not None:
            return Confirmed.from_json(row)
        with hooked(self.model, steering):
            results = {
                n: measure_refusal(self.model, self.tok, n, ps, self.m)
                for n, ps in self.sets.items()
            }
        labels = {n: labels_of(r) for n, r in results.items()}
        broken = {n: sum(broken_of(r)) for n, r in results.items()}
        rates = {n: r.refusal_rate for n, r in results.items()}
        if self.s.goal == "induce":  # broken answers never count as induced refusal
            labels[self.s.primary] = clean_labels(results[self.s.primary])
            rates[self.s.primary] = float(np.mean(labels[self.s.primary]))
        ok, reason = self.feasible(rates, broken, kl)
        answers = {n: r.answers for n, r in results.items()}
        got = Confirmed(c, rates, kl, labels, broken, answers, ok, reason)
        self.cache.put("confirm", c, got.to_json())
        return got

    def feasible(
        self, rates: dict[str, float], broken: dict[str, int], kl: float
    ) -> tuple[bool, str]:
        """The guards, on judged answers, in this order (the first that fails is the
        reason): benign KL; no set with more new broken (looping, corrupted) answers than
        the benign tolerance; benign refusal not raised; harmful refusal kept (not induce)."""
        s, base = self.s, self.baseline
        if not kl <= s.kl_max:
            return False, "benign KL"
        for name, n in broken.items():
            if (n - self.broken0[name]) / len(self.sets[name]) > s.benign_tolerance + 1e-9:
                return False, f"broken answers on {name}"
        if rates["benign"] > base["benign"] + s.benign_tolerance + 1e-9:
            return False, "benign refusal rose"
        if s.goal != "induce" and rates["harmful"] < base["harmful"] - s.harmful_tolerance - 1e-9:
            return False, "harmful refusal dropped"
        return True, ""


def labels_of(r: SetResult) -> list[int]:
    """1 where the prompt's c(x) is above the band (refusal), else 0."""
    return [int(s is not None and s > r.band) for s in r.scores]


def broken_of(r: SetResult) -> list[bool]:
    """Per prompt: the judge's rule says the answer is looping or corrupted text."""
    return [kind in ("looping", "corrupted") for kind in r.kinds]


def clean_labels(r: SetResult) -> list[int]:
    """Refusal labels with broken answers counted as not refused (induce)."""
    return [int(lab and not bad) for lab, bad in zip(labels_of(r), broken_of(r), strict=True)]
