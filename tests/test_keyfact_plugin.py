"""KeyFact is a plug-in of the built-in task: its settings are composed into the run configuration like a scheme's,
and no module outside ``keyfact/`` (the bench command's help text aside) names one of its settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from tokenweight.config import CoreConfig, TokenweightConfig, task_settings_class
from tokenweight.keyfact.settings import KeyfactSettings

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "tokenweight"


def test_keyfact_settings_are_composed_into_the_config_not_declared_in_the_core():
    names = [item.name for item in dataclasses.fields(KeyfactSettings)]
    assert task_settings_class() is KeyfactSettings and len(names) == 10
    assert not {item.name for item in dataclasses.fields(CoreConfig)} & set(names)
    config = TokenweightConfig(output_dir="/tmp/tw-plugin", keyfact_train_size=40, keyfact_shortcut=0.25)
    assert (config.keyfact_train_size, config.keyfact_shortcut, config.keyfact_eval_size) == (40, 0.25, 512)


def test_no_module_outside_keyfact_names_a_keyfact_setting():
    names = [item.name for item in dataclasses.fields(KeyfactSettings)]
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    found = [f"{path.relative_to(PACKAGE_DIR)}:{number}"
             for path in sorted(PACKAGE_DIR.rglob("*.py")) if "keyfact" not in path.relative_to(PACKAGE_DIR).parts
             and path.relative_to(PACKAGE_DIR) != Path("commands", "bench.py")  # the KeyFact bench's variants, in words
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, f"KeyFact settings named outside keyfact/: {found}"
