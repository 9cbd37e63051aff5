"""Is a new model better than the champion, or only luckier? Both predicted the same test images, so the comparison
is paired: McNemar's exact test on the images where exactly one of them is right, and the accuracy difference with
a 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

Z95 = 1.959964  # the standard normal's 97.5% quantile


def mcnemar_exact_p(new_only: int, champion_only: int) -> float:
    """Two-sided exact McNemar p-value: under no difference, each of the n discordant images is a fair coin flip."""
    n = new_only + champion_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(new_only, champion_only) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class PairedComparison:
    """The outcome on `n` shared test images: how many only the new model got right, and only the champion."""

    n: int
    new_only: int
    champion_only: int

    @classmethod
    def of(cls, new_right: np.ndarray, champion_right: np.ndarray) -> PairedComparison:
        """From the two models' per-image correctness (boolean arrays over the same images)."""
        return cls(len(new_right), int((new_right & ~champion_right).sum()), int((~new_right & champion_right).sum()))

    @property
    def p_value(self) -> float:
        """McNemar's exact two-sided p-value."""
        return mcnemar_exact_p(self.new_only, self.champion_only)

    @property
    def delta(self) -> float:
        """New accuracy minus the champion's."""
        return (self.new_only - self.champion_only) / self.n

    @property
    def ci95(self) -> tuple[float, float]:
        """The 95% interval of the paired accuracy difference (Wald, with the paired variance)."""
        discordant = self.new_only + self.champion_only
        variance = (discordant / self.n - self.delta**2) / self.n
        half = Z95 * math.sqrt(max(variance, 0.0))
        return self.delta - half, self.delta + half

    def better_at(self, significance: float) -> bool:
        """Whether the new model is better, with p below `significance`."""
        return self.delta > 0 and self.p_value < significance

    def tags(self) -> dict[str, str]:
        """The new version's tags."""
        low, high = self.ci95
        return {
            "mcnemar_p_value": f"{self.p_value:.4g}",
            "test_accuracy_delta": f"{self.delta:+.4f}",
            "test_accuracy_delta_ci95": f"[{low:+.4f}, {high:+.4f}]",
        }

    def describe(self) -> str:
        """E.g. `+0.0029 (95% CI -0.0012 to +0.0070; McNemar p = 0.17 on 41 vs 12 images)`."""
        low, high = self.ci95
        return (
            f"{self.delta:+.4f} (95% CI {low:+.4f} to {high:+.4f}; McNemar p = {self.p_value:.2g} on "
            f"{self.new_only} vs {self.champion_only} images only one got right)"
        )
