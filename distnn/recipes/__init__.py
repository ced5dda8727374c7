"""Named training configs shipped with distnn (``distnn recipes``; ``--recipe NAME``).

Each is a TOML file of ``distnn train`` settings plus a ``description`` and, for
search recipes, a ``[search]`` table of ``grid``/``random`` specs."""
from __future__ import annotations

import tomllib
from importlib import resources


def names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".toml"))


def load(name: str) -> dict:
    """The recipe's table: settings, ``description`` and an optional ``search`` table."""
    if name not in names():
        raise ValueError(f"unknown recipe {name!r}; `distnn recipes` lists {names()}")
    return tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text())


def text(name: str) -> str:
    """The recipe's TOML file, as ``--config`` reads it."""
    load(name)
    return resources.files(__name__).joinpath(f"{name}.toml").read_text()


def settings(name: str) -> dict:
    """Only the ``distnn train`` settings of a recipe."""
    return split(load(name), f"recipe {name}")[0]


def split(table: dict, where: str) -> tuple[dict, dict]:
    """A recipe or ``--config`` table -> (train settings, its ``[search]`` table); a
    ``description`` string is allowed and dropped."""
    rest = dict(table)
    desc, search = rest.pop("description", ""), rest.pop("search", {})
    if not isinstance(desc, str) or not isinstance(search, dict):
        raise ValueError(f"{where}: 'description' must be a string and 'search' a table")
    return rest, search
