"""The `fashion-hpo` parser, built from the settings declarations: one flag per field, its help the field's."""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Sequence
from dataclasses import Field, fields
from typing import Any

from fashion_hpo.core.proxy_settings import PROXY, ProxySettings
from fashion_hpo.core.settings import (
    REGISTER,
    STUDY,
    RunSettings,
    command_fields,
    field_default,
    flag_of,
    typed_default,
)
from fashion_hpo.core.use_settings import PREDICT, VERIFY, PredictSettings, VerifySettings
from fashion_hpo.core.validation import storage_from_environment

# Each command: the settings class it fills, its MLproject entry point, and its one-line help.
COMMANDS: dict[str, tuple[type, str, str]] = {
    STUDY: (RunSettings, "main", "run the tracked study, then refit, test and register the best model"),
    REGISTER: (RunSettings, "register", "refit, test and register the best trial of an existing study"),
    PREDICT: (PredictSettings, "predict", "classify images with a registered model"),
    VERIFY: (VerifySettings, "verify", "check a registered model's files against the digests of its version"),
    PROXY: (
        ProxySettings,
        "storage_proxy",
        "serve the Optuna database to many workers from one process (Optuna's gRPC storage proxy)",
    ),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def switch_flag(spec: Field[Any]) -> str:
    """The flag of a boolean field: `--no-<name>` turns an on-by-default setting off, `--<name>` turns one on."""
    return flag_of(f"no_{spec.name}") if spec.default else flag_of(spec.name)


def argparse_default(spec: Field[Any]) -> Any:
    """What argparse fills in when the flag is not given: the field's default, or its `shown` text parsed (an empty
    `shown` stays empty: the settings resolve it, as the storage from its variable)."""
    default = field_default(spec)
    shown = spec.metadata["shown"]
    if shown is None or default is None or isinstance(default, list):
        return default
    return shown if shown == "" else spec.metadata["parse"](shown)


def option_kwargs(spec: Field[Any]) -> dict[str, Any]:
    """argparse's keyword arguments for one settings field."""
    meta = spec.metadata
    if isinstance(spec.default, bool):
        state = "on" if spec.default else "off"
        action = "store_false" if spec.default else "store_true"
        return {"dest": spec.name, "action": action, "help": f"{meta['help']} (default: {state})"}
    kwargs: dict[str, Any] = {"help": f"{meta['help']} (default: {typed_default(spec) or 'empty'})"}
    kwargs["default"] = argparse_default(spec)
    if meta["choices"]:
        kwargs["choices"] = meta["choices"]
    if meta["parse"] is not None:
        kwargs["type"] = meta["parse"]
    if meta["positional"]:
        kwargs["nargs"] = "*" if isinstance(kwargs["default"], list) else "?"
        kwargs["metavar"] = spec.name.split("_")[0].upper().rstrip("S")
    return kwargs


def add_settings(parser: argparse.ArgumentParser, cls: type, command: str) -> None:
    """One option (or positional argument) per field of `cls` that `command` takes."""
    for spec in command_fields(cls, command):
        kwargs = option_kwargs(spec)
        if spec.metadata["positional"]:
            parser.add_argument(spec.name, **kwargs)
        elif isinstance(spec.default, bool):
            parser.add_argument(switch_flag(spec), **kwargs)
        else:
            parser.add_argument(flag_of(spec.name), **kwargs)


def build_parser() -> OneLineParser:
    """The `fashion-hpo` parser and its subcommands."""
    parser = OneLineParser(prog="fashion-hpo", description="Optuna search over FashionMNIST classifiers, in MLflow.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (cls, _, help_text) in COMMANDS.items():
        add_settings(commands.add_parser(name, help=help_text), cls, name)
    return parser


def settings_from_args(args: argparse.Namespace) -> Any:
    """The settings object of the parsed command (defaults for the fields that command does not take)."""
    cls = COMMANDS[args.command][0]
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    if cls in (RunSettings, ProxySettings):
        values["storage"] = values.get("storage") or storage_from_environment()  # MLproject passes '' for none
    return cls(**values)


def suggestion(unknown: str, command: str) -> str:
    """`; did you mean --x?` for the command's flag closest to `unknown` (nothing when none is close)."""
    cls = COMMANDS[command][0]
    known = [switch_flag(f) if isinstance(f.default, bool) else flag_of(f.name) for f in command_fields(cls, command)]
    close = difflib.get_close_matches(unknown.split("=")[0], known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def mlproject_parameter(unknown: str, command: str) -> str | None:
    """Under `mlflow run`, which appends an undeclared `-P name=value` as `--name value`: the one line in
    MLproject's words, else None."""
    if not (os.environ.get("MLFLOW_RUN_ID") and unknown.startswith("--") and "_" in unknown):
        return None
    cls, entry_point, _ = COMMANDS[command]
    name = unknown[2:].split("=")[0]
    declared = [f.name for f in command_fields(cls, command) if f.metadata["mlproject"]]
    close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
    hint = f"; did you mean -P {close[0]}?" if close else f"; it has {', '.join(declared)}"
    return f"-P {name} is not a parameter of entry point {entry_point}{hint}"


def describe_failed_project_run(message: str) -> None:
    """Say on the run `mlflow run` made (which it ends FAILED) why it failed: its page shows the line."""
    try:
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        MlflowClient().set_tag(os.environ["MLFLOW_RUN_ID"], MLFLOW_RUN_NOTE, f"Not started: {message}")
    except Exception:  # the line on stderr says it anyway; a tracking problem must not hide it
        return


def parse_args(parser: OneLineParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse a command line; an unknown flag is one line that suggests the nearest known one."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((item for item in unknown if item.startswith("-")), unknown[0])
        message = mlproject_parameter(flag, args.command)
        if message is None:
            message = f"unrecognized arguments: {' '.join(unknown)}{suggestion(flag, args.command)}"
        else:
            describe_failed_project_run(message)
        parser.exit(2, f"{parser.prog} {args.command}: error: {message}\n")
    return args
