"""Shared by the benchmark scripts in this folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def native() -> str:
    """The omnirelay-native to measure: $OMNIRELAY_NATIVE_BIN, else the newest build/*/ one."""
    override = os.environ.get("OMNIRELAY_NATIVE_BIN")
    if override:
        return override
    found = sorted(REPO.glob("build/*/cpp/omnirelay/cli/omnirelay-native"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        sys.exit("omnirelay-native not built (cmake --build build/release --target omnirelay-native)")
    return str(found[0])
