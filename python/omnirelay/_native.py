"""Locates the native binary ``omnirelay-native`` (the C++ CLI).

Order: ``$OMNIRELAY_NATIVE_BIN``; the copy installed inside this package
(``omnirelay/bin/``, by ``pip install`` or an editable install); a build tree of
a source checkout (``build/*/cpp/omnirelay/cli/``), newest first, for
contributors running from the tree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

_PACKAGE_DIR = Path(__file__).resolve().parent


class NativeBinaryNotFound(RuntimeError):
    pass


def find_native_binary() -> Path:
    override = os.environ.get("OMNIRELAY_NATIVE_BIN")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise NativeBinaryNotFound(f"OMNIRELAY_NATIVE_BIN={override} is not an executable file")
        return path
    installed = _PACKAGE_DIR / "bin" / "omnirelay-native"
    if installed.is_file():
        return installed
    candidate = _from_source_tree()
    if candidate is not None:
        return candidate
    raise NativeBinaryNotFound(
        "omnirelay-native not found: install the package (pip install .) or build it "
        "(cmake --build build/release --target omnirelay-native), or set OMNIRELAY_NATIVE_BIN"
    )


def _from_source_tree() -> Optional[Path]:
    repo = _PACKAGE_DIR.parent.parent
    if not (repo / "CMakeLists.txt").is_file():
        return None
    found = [
        p
        for p in repo.glob("build/*/cpp/omnirelay/cli/omnirelay-native")
        if p.is_file() and os.access(p, os.X_OK)
    ]
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime)
