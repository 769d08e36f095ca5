"""scripts/eval_real/heldout_front.py's summary of a tuning report (made-up numbers, no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bake.artifacts.tuning import Candidate, Confirmed, Proxy

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "eval_real"


@pytest.fixture(scope="module")
def front():
    sys.path.insert(0, str(SCRIPTS))
    try:
        return __import__("heldout_front")
    finally:
        sys.path.remove(str(SCRIPTS))


def _proxy(option: str, sensitive: float, harmful: float, kl: float) -> dict:
    c = Candidate(option, (3,), -sensitive)
    return Proxy(c, {"sensitive": sensitive, "harmful": harmful}, kl, kl).to_json()


def _labels(refused: int, n: int = 10) -> list[int]:
    return [1] * refused + [0] * (n - refused)


def _confirmed(sensitive: int, harmful: int, kl: float) -> dict:
    labels = {"sensitive": _labels(sensitive), "harmful": _labels(harmful), "benign": _labels(0)}
    rates = {k: sum(v) / len(v) for k, v in labels.items()}
    return Confirmed(Candidate("file", (3,), -0.1), rates, kl, labels, {}).to_json()


def _report() -> dict:
    return {
        "settings": {"kl_max": 0.1},
        "baseline_labels": {"sensitive": _labels(6), "harmful": _labels(6), "benign": _labels(1)},
        "proxy_baseline": {"sensitive": 0.6, "harmful": 0.6},
        "stage1": [
            _proxy("file", 0.5, 0.5, 0.01),
            _proxy("file", 0.3, 0.4, 0.05),
            _proxy("file", 0.4, 0.3, 0.02),  # dominated by (0.3, 0.4)
            _proxy("file", 0.1, 0.6, 0.5),  # above the KL bound
            _proxy("over", 0.2, 0.2, 0.03),
        ],
        "stage2": [_confirmed(2, 5, 0.05), _confirmed(1, 4, 0.05), _confirmed(2, 6, 0.2)],
        "seconds": {"stage 1": 1.0},
    }


def test_fronts_per_option_leave_out_dominated_and_over_the_bound(front):
    s = front.summary(_report())
    file = s["options"]["file"]
    assert (file["candidates"], file["under_kl_bound"]) == (4, 3)
    assert [(p["sensitive"], p["harmful"]) for p in file["front"]] == [(0.3, 0.4), (0.5, 0.5)]
    assert len(s["options"]["over"]["front"]) == 1


def test_targets_are_a_third_of_unsteered_ten_points_and_the_kl_bound(front):
    s = front.summary(_report())
    assert s["unsteered"]["sensitive"]["rate"] == pytest.approx(0.6)
    low, high = s["unsteered"]["sensitive"]["ci95"]
    assert low < 0.6 < high
    met = [row["meets"] for row in s["judged"]]
    assert met[0] == {"sensitive": True, "harmful": True, "kl": True}  # 20% <= 20%, 50% >= 50%
    assert met[1] == {"sensitive": True, "harmful": False, "kl": True}
    assert met[2]["kl"] is False
    md = front.markdown(s)
    assert "sensitive <= 20%" in md and "harmful >= 50%" in md
    assert md.count("| add file [3] flat") == 3
