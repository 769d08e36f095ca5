"""Jinja templates for the model cards steerbake generates (installed as package data)."""

from importlib import resources
from pathlib import Path


def template_path(name: str) -> Path:
    return Path(str(resources.files("model_cards") / name))
