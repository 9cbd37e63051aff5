"""What the database sees with many workers, straight on PostgreSQL and through `fashion-hpo storage-proxy`: peak
connections to the study's database (pg_stat_activity), trials per minute, tracking requests per second.

Each worker count runs `fashion-hpo study --workers N` of tiny trials on a new database, once with --storage the
database's URL and once with --storage grpc://127.0.0.1:PORT of a proxy in front of it (the proxy's connections are
the ones counted then). Needs $FASHION_HPO_TEST_POSTGRES_URL (a role that may create databases)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from uuid import uuid4

from benchmark_args import parse_args
from scale_workers import (
    WORKER_GB,
    available_gb,
    drop_database,
    free_port,
    new_database,
    run_workers,
    service,
    tracking_server,
)


def proxied_run(url: str, data_dir: Path, workers: int, n_trials: int, tracking: str, log: Path) -> dict[str, object]:
    """One run of `workers` through a storage proxy started for it in front of `url`."""
    port = free_port()
    command = [sys.executable, "-m", "fashion_hpo", "storage-proxy", "--storage", url, "--port", str(port)]
    with service(command, port, log.with_name(f"proxy-{port}.log")):
        row = run_workers(url, f"grpc://127.0.0.1:{port}", data_dir, workers, n_trials, tracking, log)
    return row


def compare(admin_url: str, data_dir: Path, counts: list[int], n_trials: int, folder: Path) -> list[dict[str, object]]:
    """Each worker count straight on the database and through the proxy, each run on its own new database."""
    command, port = tracking_server(folder)
    rows: list[dict[str, object]] = []
    with service(command, port, folder / "server.log") as log:
        for workers in counts:
            if workers * WORKER_GB > available_gb():
                rows.append({"workers": workers, "skipped": f"needs about {workers * WORKER_GB:.0f} GB"})
                continue
            for via_proxy in (False, True):
                url = new_database(admin_url)
                try:
                    tracking = f"http://127.0.0.1:{port}"
                    row = (
                        proxied_run(url, data_dir, workers, n_trials, tracking, log)
                        if via_proxy
                        else run_workers(url, url, data_dir, workers, n_trials, tracking, log)
                    )
                finally:
                    drop_database(admin_url, url)
                rows.append({**row, "via": "proxy" if via_proxy else "database"})
    return rows


def main() -> None:
    """1, 4 and 8 workers (2 with --quick), straight and through the proxy; writes the JSON."""
    args = parse_args(__doc__, __file__, "2 workers, 4 trials", device=False)
    admin_url = os.environ.get("FASHION_HPO_TEST_POSTGRES_URL", "")
    if not admin_url:
        raise SystemExit("set FASHION_HPO_TEST_POSTGRES_URL to a PostgreSQL role that may create databases")
    counts, n_trials = ([2], 4) if args.quick else ([1, 4, 8], 24)
    folder = Path(tempfile.gettempdir()) / f"proxy-connections-{uuid4().hex[:6]}"
    folder.mkdir()
    rows = compare(admin_url, args.data_dir.resolve(), counts, n_trials, folder)
    args.output.write_text(json.dumps({"n_trials": n_trials, "runs": rows}, indent=2))
    for row in rows:
        if "skipped" not in row:
            print(f"{row['workers']:>2} workers via {row['via']}: peak {row['peak_db_connections']} connections")


if __name__ == "__main__":
    main()
