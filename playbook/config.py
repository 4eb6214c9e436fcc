"""Load the company configuration file (YAML) and validate it; errors name the file and the field."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pipeline.config import ConfigError, PipelineConfig, parse_config
from playbook.settings import config_path

__all__ = ["ConfigError", "PipelineConfig", "load_config"]


def load_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    file = config_path(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: configuration file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: (top level): expected a mapping of company, sources and reports")
    return parse_config(data, origin=str(file))
