"""Import a script of experiments/ (not a package) as a module, for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` imported under the module name ``tcm_experiments_<name>``."""
    spec = importlib.util.spec_from_file_location(
        f"tcm_experiments_{name}", ROOT / "experiments" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
