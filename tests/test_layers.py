"""Which layers load torch: the web layer's checks and the project's state must not (issue 17 item 7).

Each import runs in a fresh interpreter, since this test process has long imported torch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

TORCH_FREE = (
    "ovaal_backend.config",
    "ovaal_backend.engine.rounds",
    "ovaal_backend.engine.dense",
    "ovaal_backend.engine.scorers",
    "ovaal_backend.engine.classifiers",
    "ovaal_backend.engine.schedules",
    "ovaal_backend.engine.pseudo_labels",
    "ovaal_backend.backend.validate",
    "ovaal_backend.backend.cleanup",
    "ovaal_backend.backend.project.state",
    "ovaal_backend.backend.project.label_config",
    "ovaal_backend.backend.project.corrected",
    "ovaal_backend.backend.convert",
    "ovaal_backend.simulator.flags",
    "ovaal_backend.cli",
)
"""Modules a process may import without paying for torch: request checks (validate), the cleanup command, the typed
state and label config, the settings, the round plan and the registries the settings take their names from, the
Label Studio <-> pixels conversions, and the command line with simulate's flags (``--help`` starts at once)."""


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_loads_no_torch(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", f"{module} loads torch"

