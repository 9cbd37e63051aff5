"""Deployment constraints on a model's cost: what `--max-params` and `--max-latency-ms` allow."""

from __future__ import annotations

from dataclasses import dataclass

from fashion_hpo.core.constants import LATENCY_MS, N_PARAMS


@dataclass(frozen=True)
class CostLimits:
    """Deployment constraints (0 = none): at most `max_params` parameters, at most `max_latency_ms` per image."""

    max_params: int = 0
    max_latency_ms: float = 0.0

    def excess(self, name: str, value: float) -> float | None:
        """How far `value` of cost `name` exceeds its limit (<= 0: within it); None when that cost is unlimited."""
        limit = {N_PARAMS: self.max_params, LATENCY_MS: self.max_latency_ms}.get(name, 0)
        return value - limit if limit else None

    def allows(self, costs: dict[str, float]) -> bool:
        """Whether recorded costs (a trial's user attributes, a version's tags) are within every limit.

        A cost that was never measured (a trial pruned before its latency was timed) is not held against it."""
        return all((self.excess(name, float(value)) or 0.0) <= 0 for name, value in costs.items())

    def describe(self) -> str:
        """The limits as a short phrase, e.g. `n_params <= 100000, latency_ms <= 0.05`, or `none`."""
        limits = [f"{N_PARAMS} <= {self.max_params}"] if self.max_params else []
        limits += [f"{LATENCY_MS} <= {self.max_latency_ms:g}"] if self.max_latency_ms else []
        return ", ".join(limits) or "none"


NO_LIMITS = CostLimits()
