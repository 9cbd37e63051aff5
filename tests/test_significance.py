"""The champion gate's statistics: McNemar's exact test and the paired accuracy difference."""

from __future__ import annotations

import numpy as np
import pytest

from fashion_hpo.registry.significance import PairedComparison, mcnemar_exact_p


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [(0, 0, 1.0), (5, 5, 1.0), (10, 0, 0.001953125), (8, 2, 0.109375), (20, 8, 0.03571)],  # exact binomial sums
)
def test_mcnemar_exact_p_is_the_two_sided_binomial_tail(b: int, c: int, p: float) -> None:
    assert mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-3)
    assert mcnemar_exact_p(c, b) == pytest.approx(p, rel=1e-3), "symmetric"


def test_a_large_study_sized_comparison_stays_exact() -> None:
    assert 0 < mcnemar_exact_p(2600, 2400) < 0.01 < mcnemar_exact_p(2520, 2480)


def test_a_few_images_more_is_noise_and_many_more_is_progress() -> None:
    rng = np.random.default_rng(0)
    champion = rng.random(10_000) < 0.93
    noise = champion.copy()
    noise[np.flatnonzero(~champion)[:2]] = True  # two more right: a 0.0002 "win"
    small = PairedComparison.of(noise, champion)
    assert (small.new_only, small.champion_only, small.delta) == (2, 0, 0.0002)
    assert not small.better_at(0.05) and small.p_value == 0.5
    progress = champion.copy()
    progress[np.flatnonzero(~champion)[:60]] = True
    assert PairedComparison.of(progress, champion).better_at(0.05)


def test_the_interval_holds_the_difference_and_the_tags_say_it() -> None:
    comparison = PairedComparison(n=10_000, new_only=120, champion_only=80)
    low, high = comparison.ci95
    assert low < comparison.delta == 0.004 < high and high - low < 0.01
    assert comparison.tags() == {
        "mcnemar_p_value": f"{comparison.p_value:.4g}",
        "test_accuracy_delta": "+0.0040",
        "test_accuracy_delta_ci95": f"[{low:+.4f}, {high:+.4f}]",
    }
