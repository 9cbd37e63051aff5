"""Accounts and permissions of an authenticated MLflow tracking server (`mlflow server --app-name basic-auth`) for
one fashion-hpo study, run by its admin:

1. rotate the admin's password (the one it was bootstrapped with) when NEW_ADMIN_PASSWORD is set;
2. create the worker account and the read-only account;
3. create the study's experiment and the registered model, owned by the admin, so that no other account can claim
   those names first (every account may create new experiments and models);
4. grant the worker EDIT on both (log runs and models, register versions, move aliases) and the reader READ on both
   (search and compare runs, load models).

Passwords come only from the environment, never from arguments:
  MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD   the admin and its current password
  NEW_ADMIN_PASSWORD                                   optional: the admin's new password (12 characters or more)
  HPO_WORKER_PASSWORD, HPO_READER_PASSWORD             the two accounts' passwords (12 characters or more)
Rerunnable: existing accounts keep their passwords, existing experiment and model are reused, grants are set again.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from mlflow.server.auth.client import AuthServiceClient

EDIT, READ = "EDIT", "READ"


def password(variable: str) -> str:
    """A password from the environment; exits with one line when it is missing."""
    value = os.environ.get(variable, "")
    if not value:
        sys.exit(f"secure_tracking: set {variable}")
    return value


def rotate_admin_password(auth: AuthServiceClient, new_password: str) -> None:
    """Change the admin's own password; later requests of this process use the new one."""
    admin = os.environ["MLFLOW_TRACKING_USERNAME"]
    auth.update_user_password(admin, new_password, current_password=os.environ["MLFLOW_TRACKING_PASSWORD"])
    os.environ["MLFLOW_TRACKING_PASSWORD"] = new_password
    print(f"password of {admin!r} changed")


def ensure_user(auth: AuthServiceClient, username: str, variable: str) -> None:
    """Create the account unless it exists (an existing account keeps its password)."""
    try:
        auth.get_user(username)
        print(f"user {username!r} exists")
    except MlflowException:
        auth.create_user(username, password(variable))
        print(f"user {username!r} created")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment named `name`, created when missing."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model unless it exists."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def grant(auth: AuthServiceClient, user: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Give `user` exactly `permission` on the resource (replacing an earlier grant)."""
    try:
        auth.grant_user_permission(user, resource_type, resource_id, permission)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(user, resource_type, resource_id)
        auth.grant_user_permission(user, resource_type, resource_id, permission)


def main() -> None:
    """Parse the arguments and set the server up."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="the server's URL")
    parser.add_argument("--experiment", required=True, help="the study's experiment (fashion-hpo: the study name)")
    parser.add_argument("--registered-model-name", default="fashion-mnist-classifier")
    parser.add_argument("--worker", default="hpo-worker", help="the account the study's workers use")
    parser.add_argument("--reader", default="reader", help="the read-only account")
    args = parser.parse_args()
    if not args.tracking_uri:
        parser.error("give --tracking-uri or set MLFLOW_TRACKING_URI")
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        password(variable)
    auth = get_app_client("basic-auth", tracking_uri=args.tracking_uri)
    if os.environ.get("NEW_ADMIN_PASSWORD"):
        rotate_admin_password(auth, os.environ["NEW_ADMIN_PASSWORD"])
    ensure_user(auth, args.worker, "HPO_WORKER_PASSWORD")
    ensure_user(auth, args.reader, "HPO_READER_PASSWORD")
    client = MlflowClient(args.tracking_uri)
    experiment_id = ensure_experiment(client, args.experiment)
    ensure_registered_model(client, args.registered_model_name)
    for user, permission in ((args.worker, EDIT), (args.reader, READ)):
        grant(auth, user, "experiment", experiment_id, permission)
        grant(auth, user, "registered_model", args.registered_model_name, permission)
        print(f"{user!r}: {permission} on experiment {args.experiment!r} and model {args.registered_model_name!r}")


if __name__ == "__main__":
    main()
