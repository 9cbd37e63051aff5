"""A worker's storage behind `fashion-hpo storage-proxy` (`--storage grpc://HOST:PORT`): Optuna's GrpcStorageProxy
with the study-wide budget and heartbeats, which Optuna's proxy lacks, carried by the methods of grpc_calls.

- The budget is counted and the trial created by the proxy, where the database is, under the same lock as a worker
  on the database takes (BudgetedStorage); each request carries the worker's --n-trials, and a full study comes back
  as STUDY_FULL, raised here as rdb.StudyFull, as a worker on the database sees it.
- Optuna's GrpcStorageProxy is no BaseHeartbeat, so Optuna would neither record a running trial's heartbeats nor
  fail the trials of a killed worker: this storage is one. Optuna's heartbeat thread records each beat in the
  database through the proxy, and Optuna's stale-trial check at each trial's start asks the proxy for the trials
  whose beats stopped for the worker's --grace-period; the worker fails and retries them as on the database."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import grpc
import optuna
from optuna.storages import BaseStorage, GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat  # public as Optuna's documented base of heartbeat storages
from optuna.trial import FrozenTrial

from fashion_hpo.core.process import raised_from
from fashion_hpo.core.quiet import experimental_features
from fashion_hpo.core.urls import proxy_address
from fashion_hpo.storage.grpc_calls import CREATE_TRIAL, RECORD_HEARTBEAT, STALE_TRIALS, STUDY_FULL, unary_call
from fashion_hpo.storage.rdb import BudgetedStorage, StaleTrialCallback, StudyFull, engine_url

# How long a worker waits for the proxy to answer when it opens the study.
PROXY_ANSWER_TIMEOUT_S = 10.0


class ProxyStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client, with the study-wide budget and heartbeats (see the module's docstring)."""

    def __init__(
        self,
        address: tuple[str, int],
        max_trials: int,
        heartbeat_interval: int,
        grace_period: int,
        on_stale: StaleTrialCallback | None,
    ) -> None:
        with experimental_features():
            super().__init__(host=address[0], port=address[1])
        try:
            self.wait_server_ready(timeout=PROXY_ANSWER_TIMEOUT_S)
        except ConnectionError:
            raise ConnectionError(f"no storage proxy answered at {address[0]}:{address[1]}") from None
        self.max_trials, self.heartbeat_interval, self.grace_period = max_trials, heartbeat_interval, grace_period
        self.on_stale = on_stale
        self.own_channel = grpc.insecure_channel(f"{address[0]}:{address[1]}")
        self.calls = {
            name: unary_call(self.own_channel, name) for name in (CREATE_TRIAL, RECORD_HEARTBEAT, STALE_TRIALS)
        }

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """A new trial if the study's budget allows (a template, an enqueued retry, always may)."""
        if template_trial is not None:
            return super().create_new_trial(study_id, template_trial)
        try:
            reply = self.calls[CREATE_TRIAL]({"study_id": study_id, "max_trials": self.max_trials})
        except grpc.RpcError as err:
            if err.code() == STUDY_FULL:
                raise StudyFull(json.loads(err.details())["running"]) from None
            raise
        return int(reply["trial_id"])

    def record_heartbeat(self, trial_id: int) -> None:
        """A running trial's heartbeat, recorded in the database by the proxy. A beat the proxy does not take is
        skipped, not raised: an error would end Optuna's heartbeat thread, and the trial, still running, would be
        reclaimed as a dead worker's; the next beat tries again."""
        try:
            self.calls[RECORD_HEARTBEAT]({"trial_id": trial_id})
        except grpc.RpcError as err:
            logging.getLogger(__name__).warning("Heartbeat of trial id %d not recorded: %s", trial_id, err.details())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The study's running trials whose heartbeats stopped for this worker's grace period (asked of the proxy)."""
        reply = self.calls[STALE_TRIALS]({"study_id": study_id, "grace_period": self.grace_period})
        return [int(trial_id) for trial_id in reply["trial_ids"]]

    def get_heartbeat_interval(self) -> int:
        """Seconds between a running trial's heartbeats."""
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """What the worker does with a trial whose worker died, after Optuna failed it (retries it)."""
        return self.on_stale

    def close(self) -> None:
        """Close both channels to the proxy."""
        self.own_channel.close()
        super().close()


def budgeted_storage(
    url: str, max_trials: int, heartbeat_interval: int, grace_period: int, on_stale: StaleTrialCallback | None
) -> BaseStorage:
    """A worker's storage with the study-wide budget: through the proxy at a `grpc://` URL, else on the database."""
    address = proxy_address(url)
    if address is not None:
        return ProxyStorage(address, max_trials, heartbeat_interval, grace_period, on_stale)
    return BudgetedStorage(url, max_trials, heartbeat_interval, grace_period, on_stale)


def plain_storage(url: str) -> str | BaseStorage:
    """What optuna.load_study takes for a study that is only read or added to: the proxy, or the database's URL."""
    address = proxy_address(url)
    if address is None:
        return engine_url(url)
    with experimental_features():
        return GrpcStorageProxy(host=address[0], port=address[1])


def proxy_lost_line(err: BaseException) -> str | None:
    """One line for a worker that lost its storage proxy (gRPC's UNAVAILABLE anywhere in how `err` came about); None
    for any other error."""
    lost: list[grpc.RpcError] = []

    def unavailable(cause: BaseException) -> bool:
        if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNAVAILABLE:
            lost.append(cause)
        return bool(lost)

    if not raised_from(err, unavailable):
        return None
    return (
        f"lost the storage proxy ({lost[0].details()}); start `fashion-hpo storage-proxy` again and rerun the same "
        "command: the study continues, and the trials this worker was running are retried after --grace-period"
    )
