"""Typed job configuration: one pydantic model per stage, filled from (lowest to highest precedence)
field defaults < ``--config FILE.yaml`` < env vars ``LOGANALYZER_<STAGE>_<FIELD>`` < flags / ``key=value``.

Every stage's ``main`` is ``cfg = parse_config(Cfg, "stage", argv)`` followed by ``run(cfg)``. Unknown keys in
YAML, env or overrides are errors (exit code 2 with a message naming the key and the valid ones).
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from loganalyzer.resources import shipped

EXIT_USAGE = 2
SEED = 1309  # every stage's default seed (data splits, chunk lengths, training, bootstrap resampling)
# Where recipes, deepspeed/ and models/ are looked up: jobs/configs in a checkout, loganalyzer/configs in an
# installed wheel (loganalyzer.resources). In the cluster LOGANALYZER_CONFIGS_DIR is a search path ("dir1:dir2"):
# the ConfigMaps generated from jobs/configs (editable without rebuilding an image) first, then the image's copy.
CONFIGS_DIR = shipped("configs")


def configs_dirs() -> list[Path]:
    """The configs search path: ``LOGANALYZER_CONFIGS_DIR`` (os.pathsep-separated) or ``CONFIGS_DIR``."""
    env = os.environ.get("LOGANALYZER_CONFIGS_DIR", "")
    return [Path(p) for p in env.split(os.pathsep) if p] or [CONFIGS_DIR]


class StageConfig(BaseModel):
    """Base for stage configs: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def default(cls, field: str) -> Any:
        """The field's default: the one home of a default that the pipeline's parameters and other entry points
        derive from. Raises KeyError for an unknown field and ValueError for a required one."""
        info = cls.model_fields[field]
        if info.is_required():
            raise ValueError(f"{cls.__name__}.{field} is required: it has no default")
        return info.get_default(call_default_factory=True)


C = TypeVar("C", bound=StageConfig)


class ConfigError(Exception):
    """Unusable configuration or input; ``message`` says what, where and how to fix it. An ordinary exception, so
    KFP steps and Ray workers handle it like any other; the command line (``loganalyzer.cli.entry``) prints
    ``error: <message>`` and exits with code ``EXIT_USAGE``."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, tuple)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; raise ConfigError when the file is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping of keys to values, got {type(data).__name__}")
    return data


def config_file(name: str, subdir: str = "", suffix: str = ".yaml") -> Path:
    """A file given by path, or by name (with or without ``suffix``) in ``<configs dir>/<subdir>`` for each dir
    of the search path (``configs_dirs()``), first match wins.

    Raises ConfigError naming every place looked in when none holds it.
    """
    bases = [d / subdir for d in configs_dirs()]
    for candidate in (Path(name), *(c for b in bases for c in (b / name, b / f"{name}{suffix}"))):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{name!r} not found: neither a file nor a name in {', '.join(map(str, bases))}")


def _check_keys(cls: type[StageConfig], keys: typing.Iterable[str], where: str) -> None:
    unknown = sorted(set(keys) - set(cls.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where}; valid keys: {sorted(cls.model_fields)}"
        )


def build_parser(cls: type[StageConfig], stage: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--kebab-case`` flag per field plus ``--config`` and ``key=value``."""
    parser = argparse.ArgumentParser(
        prog=f"loganalyzer {stage}",
        description=description or (cls.__doc__ or "").strip().split("\n\n")[0],
        epilog=f"Any field may also be set as key=value, in --config YAML, or as env LOGANALYZER_"
        f"{stage.upper().replace('-', '_')}_<FIELD>.",
    )
    parser.add_argument("--config", help="YAML file with field values, or a recipe name in the configs dir "
                                         "(e.g. sft_lora); unknown keys are errors")
    for name, field in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + (
            f" (default: {field.default!r})" if not field.is_required() else " (required)"
        )
        if _is_bool(field.annotation):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif _is_list(field.annotation):
            # extend: a repeated flag adds to the list (store would keep only the last one)
            parser.add_argument(flag, dest=name, nargs="+", action="extend", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="field overrides")
    return parser


def parse_config(cls: type[C], stage: str, argv: list[str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> C:
    """Parse ``argv`` into a validated ``cls`` instance; raise ConfigError (exit 2) on any bad key or value."""
    parser = parser or build_parser(cls, stage)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        data = load_yaml(config_file(args.config))
        _check_keys(cls, data, args.config)
        values.update(data)
    prefix = f"LOGANALYZER_{stage.upper().replace('-', '_')}_"
    env = {k[len(prefix):].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    _check_keys(cls, env, f"environment ({prefix}*)")
    for key, raw in env.items():
        values[key] = _coerce(cls, key, raw)
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.replace("-", "_")
        _check_keys(cls, [key], "overrides")
        values[key] = _coerce(cls, key, raw)
    for name in cls.model_fields:
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
    try:
        return cls(**values)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid {stage} configuration:\n" + "\n".join(lines)) from None


# YAML 1.1 reads these words as booleans (PyYAML follows it); YAML 1.2 and pydantic keep them strings, and
# pydantic still turns them into booleans for a bool field. So `redact=off` and `save_strategy=no` mean the word.
_YAML11_BOOLS = frozenset({"y", "n", "yes", "no", "on", "off"})


def parse_value(raw: str) -> Any:
    """A value typed on a command line or in env: YAML (numbers, true/false, [a, b] lists, strings), except that
    the YAML 1.1 boolean words (yes/no/on/off) stay strings."""
    return raw if raw == "" or raw.strip().lower() in _YAML11_BOOLS else yaml.safe_load(raw)


def _coerce(cls: type[StageConfig], key: str, raw: str) -> Any:
    """Strings from env/overrides: ``parse_value``, and lists split on commas."""
    value = parse_value(raw)
    if _is_list(cls.model_fields[key].annotation) and isinstance(value, str):
        return [v for v in value.split(",") if v]
    return value
