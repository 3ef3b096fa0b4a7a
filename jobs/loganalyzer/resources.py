"""Files the project ships besides its code, found in a checkout and in an installed wheel.

In a checkout (``pip install -e .``) each lives at its place in the repository, its one copy; a wheel carries the
same files inside the package, because ``pyproject.toml`` maps each repository folder to a package folder
(``[tool.setuptools.package-dir]``). ``SHIPPED`` is that mapping: package folder -> repository folder.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parents[1]  # the repository root, when the package is used from a checkout
SHIPPED = {"configs": "jobs/configs", "dag": "pipelines", "loghub": "data/loghub", "manifests": "manifests"}


def shipped(name: str) -> Path:
    """The folder ``name`` of ``SHIPPED``: ``loganalyzer/<name>`` in an installed wheel, else its place in the
    checkout. Raises KeyError for a name not in ``SHIPPED``."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else CHECKOUT / SHIPPED[name]


def in_checkout() -> bool:
    """Whether the package runs from a checkout (its repository folders are beside it) rather than a wheel."""
    return not (PACKAGE / "dag").is_dir() and (CHECKOUT / SHIPPED["dag"]).is_dir()
