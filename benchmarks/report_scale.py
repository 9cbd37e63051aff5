"""The cells of docs/benchmarks.md's rows for large studies: scale.py's and gaps.py's results."""

from __future__ import annotations

from collections.abc import Iterable


def scale(r: dict) -> str:
    """scale.py's cell: the per-trial overhead at each size and storage, TPE's own cost, the workers."""
    sizes = " / ".join(f"{n:,}" for n in r["sizes"])
    storages = "; ".join(
        f"{name}: {milliseconds(row['overhead'] for row in r[name])} ms at {sizes} trials "
        f"(**{r[name][-1]['overhead'] / r[name][0]['overhead']:.2f}x**)"
        for name in ("sqlite", "postgresql")
        if name in r
    )
    tpe = milliseconds(row["tpe_s"] for row in r["sampler_growth"] if row["size"] in r["sizes"])
    return f"per-trial overhead {storages}; TPE's own {tpe} ms{workers(r.get('workers', []))}"


def milliseconds(seconds: Iterable[float]) -> str:
    """Seconds as whole milliseconds, slash-separated."""
    return " / ".join(f"{s * 1e3:.0f}" for s in seconds)


def workers(rows: list[dict]) -> str:
    """The worker counts: peak database connections straight and through the storage proxy, or why skipped."""
    if not rows:
        return ""
    peaks: dict[int, dict[str, object]] = {}
    for row in rows:
        peaks.setdefault(row["workers"], {})[row.get("via", "skipped")] = row.get(
            "peak_db_connections", row.get("skipped")
        )
    cells = [
        f"{n}: {seen['skipped']}" if "skipped" in seen else f"{n}: {seen['database']} / {seen['proxy']}"
        for n, seen in peaks.items()
    ]
    return "; peak database connections by workers, straight / through the proxy: " + ", ".join(cells)


def gaps(r: dict) -> str:
    """gaps.py's cell: the median gap between trials early and late in one study, and the summary's time."""
    return (
        f"{r['n_trials']} trials: median gap {r['median_gap_first_s'] * 1e3:.0f} ms in the first {r['window']}, "
        f"{r['median_gap_last_s'] * 1e3:.0f} ms in the last {r['window']} (**{r['gap_ratio']:.2f}x**); summary "
        f"{r['summary_s']:.1f} s after the last trial"
    )
