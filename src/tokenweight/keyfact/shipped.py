"""The KeyFact base models that ship with the package, and the command that rebuilds them.

Rebuild (after a change to the build code or settings; tests/test_keyfact_shipped.py fails until then)::

    python -m tokenweight.keyfact.shipped                 # every shipped build, ~8 min of one core per default size
    python -m tokenweight.keyfact.shipped --only small    # one of them (labels: see SHIPPED_BUILDS)

Each build is written to ``src/tokenweight/keyfact/models/<name>`` (or ``--output DIR``), and folders of
``keyfact-*`` builds that are no longer shipped are removed from there.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from .base_model import SHIPPED_DIR, write_build
from .build import build_name, build_settings
from .facts import DEFAULT_FACTS_PATH, resolve_facts

#: The second built-in facts file (families unlike the first: plurals, past tenses, young animals, animal homes,
#: tools), for checking that a ranking does not depend on one task.
EVERYDAY_FACTS_PATH = DEFAULT_FACTS_PATH.with_name("facts_everyday.json")


@dataclass(frozen=True)
class ShippedBuild:
    """A shipped build: its label, size, base seed and built-in facts file (default settings otherwise)."""

    label: str
    size: str
    seed: int
    facts: Path = DEFAULT_FACTS_PATH

    def settings(self) -> dict:
        """The build settings (as :func:`~.base_model.keyfact_base_model` computes them for this build)."""
        return build_settings(self.size, self.seed, 0.5, 0.1, 1, 3, resolve_facts(self.facts))

    def name(self) -> str:
        return build_name(self.settings())


SHIPPED_BUILDS = (
    ShippedBuild("small", "small", 0),
    ShippedBuild("small-seed1", "small", 1),
    ShippedBuild("default", "default", 0),
    ShippedBuild("default-seed1", "default", 1),
    ShippedBuild("everyday", "default", 0, EVERYDAY_FACTS_PATH),
    ShippedBuild("everyday-seed1", "default", 1, EVERYDAY_FACTS_PATH),
)


def replica_seeds(size: str = "default", facts: str | Path | None = None) -> tuple[int, ...]:
    """Base seeds of the shipped builds of ``size`` on the built-in facts file ``facts`` (``None``: the default
    facts), in order; ``()`` for any other facts file. ``tokenweight bench keyfact`` runs every row on each of them
    (base-model replicas: a ranking that holds on every one of them does not depend on one base model)."""
    target = DEFAULT_FACTS_PATH if facts is None else Path(facts).resolve()
    return tuple(b.seed for b in SHIPPED_BUILDS if b.size == size and b.facts.resolve() == target)


#: Base seeds of the shipped replicas of the default model (built-in facts).
BASE_REPLICA_SEEDS = replica_seeds()


def rebuild(labels: list[str] | None = None, output: Path = SHIPPED_DIR, progress: bool = True) -> list[Path]:
    """Build the shipped builds named by ``labels`` (all when ``None``) into ``output``, replacing a folder of the
    same name, and remove the ``keyfact-*`` folders there that no shipped build has. Returns the built folders."""
    builds = [b for b in SHIPPED_BUILDS if labels is None or b.label in labels]
    current = {b.name() for b in SHIPPED_BUILDS}
    written = []
    for build in builds:
        target = output / build.name()
        if target.exists():
            shutil.rmtree(target)
        print(f"building {build.label}: {target}", flush=True)
        written.append(write_build(build.settings(), target, progress))
    for stale in output.glob("keyfact-*"):
        if stale.is_dir() and stale.name not in current:
            print(f"removing {stale} (no longer shipped)")
            shutil.rmtree(stale)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokenweight.keyfact.shipped", description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=[b.label for b in SHIPPED_BUILDS],
                        help="build only this one (repeatable; default: all)")
    parser.add_argument("--output", type=Path, default=SHIPPED_DIR, help="folder to write to (default: %(default)s)")
    args = parser.parse_args(argv)
    rebuild(args.only, args.output)


if __name__ == "__main__":
    main()
