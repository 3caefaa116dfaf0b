"""``--asynctls-<field>`` command-line flags <-> AsyncTLSConfig (no sglang import here)."""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Sequence

from asynctls_sglang import env
from asynctls_sglang.config import AsyncTLSConfig, ConfigError, flag_name

PREFIX = "--asynctls-"


def _field_types() -> dict[str, str]:
    hints = typing.get_type_hints(AsyncTLSConfig)
    return {f.name: str(hints[f.name]) for f in dataclasses.fields(AsyncTLSConfig)}


def _convert(field: str, kind: str, raw: str):
    text = raw.strip()
    if "None" in kind and text.lower() in ("none", "null", "auto", ""):
        return None
    if "bool" in kind:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{flag_name(field)}: expected true/false, got {raw!r}")
    if "int" in kind:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{flag_name(field)}: expected an integer, got {raw!r}") from None
    if "float" in kind:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{flag_name(field)}: expected a number, got {raw!r}") from None
    return text


def split_asynctls_flags(argv: Sequence[str]) -> tuple[dict, list[str]]:
    """Take the ``--asynctls-*`` flags out of argv -> (field values, remaining argv)."""
    kinds = _field_types()
    values: dict = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith(PREFIX):
            rest.append(arg)
            i += 1
            continue
        name, eq, raw = arg[len(PREFIX):].partition("=")
        field = name.replace("-", "_")
        if field not in kinds:
            known = ", ".join(flag_name(f) for f in kinds)
            raise ConfigError(f"unknown flag {PREFIX}{name}; AsyncTLS flags are: {known}")
        if not eq:
            if "bool" in kinds[field] and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
                raw = "true"
            elif i + 1 >= len(argv):
                raise ConfigError(f"{flag_name(field)} needs a value")
            else:
                i += 1
                raw = argv[i]
        values[field] = _convert(field, kinds[field], raw)
        i += 1
    return values, rest


def config_from_argv(argv: Sequence[str]) -> tuple[AsyncTLSConfig, list[str]]:
    """Flags override ASYNCTLS_CONFIG, which overrides the defaults. Validates everything."""
    values, rest = split_asynctls_flags(argv)
    base = AsyncTLSConfig.from_env()
    merged = {**dataclasses.asdict(base), **values}
    return AsyncTLSConfig.from_dict(merged), rest


def export(cfg: AsyncTLSConfig) -> None:
    """Publish the configuration to every process SGLang will spawn."""
    os.environ[env.ASYNCTLS_CONFIG] = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
