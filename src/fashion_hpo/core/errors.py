"""Errors a user can fix: one line naming the flag or variable to change."""

from __future__ import annotations

import os

from fashion_hpo.core.urls import redact_url

# How MlflowException names a server's HTTP 401 and 403 answers (mlflow.protos.databricks_pb2 error codes).
REFUSALS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


class UsageError(ValueError):
    """A setting the user gave cannot work; `flag` names the option to fix."""

    def __init__(self, flag: str, message: str) -> None:
        label = "environment variable" if flag.isupper() and "_" in flag else "argument"
        super().__init__(f"{label} {flag}: {message}")
        self.flag = flag


def credentials_refused(err: Exception, uri: str, action: str) -> UsageError | None:
    """A tracking server's 401 or 403 as one line naming the variables that carry the credentials; None for
    any other error. `action` says what was refused (for a 403)."""
    status = REFUSALS.get(str(getattr(err, "error_code", "")))
    if status is None:
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    server = f"the tracking server {redact_url(uri)}"
    if status == 403:
        reason = f"{server} does not let user {user!r} {action} (HTTP 403): ask its admin for that permission"
    elif user:
        reason = f"{server} rejected user {user!r} (HTTP 401): check it and MLFLOW_TRACKING_PASSWORD"
    else:
        reason = f"{server} requires a login (HTTP 401): set it and MLFLOW_TRACKING_PASSWORD"
    return UsageError("MLFLOW_TRACKING_USERNAME", reason)
