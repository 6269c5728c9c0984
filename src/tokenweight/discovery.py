"""The modules of the ``tokenweight.weights`` package, found on disk without importing them: there is no hand-kept
list of schemes. ``tokenweight.weights`` imports every one of them (importing a scheme's module registers it), and
``tokenweight train --help`` compares them with those its stored text was rendered with."""

from __future__ import annotations

import pkgutil
from pathlib import Path

#: The folder of the ``tokenweight.weights`` package.
WEIGHTS_FOLDER = Path(__file__).with_name("weights")
#: The modules of the package that hold the interface and the registry, not a scheme.
INTERFACE = ("base", "tooling")


def weights_modules() -> list[str]:
    """The modules and sub-packages directly under ``weights/`` (a scheme's file or folder, or a helper shared by
    schemes such as ``kl``), the interface's left out, sorted by name: the order they are imported in, hence the
    order of the registry, of ``--weighting``'s choices and of ``--help``'s groups."""
    return sorted(module.name for module in pkgutil.iter_modules([str(WEIGHTS_FOLDER)]) if module.name not in INTERFACE)
