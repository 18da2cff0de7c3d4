"""The ``omnirelay`` command.

One command for users, two halves inside: verbs implemented in C++ (``serve``,
``version``, and later ``benchmark`` and queue admin verbs) are executed by
``omnirelay-native`` in place of this process (so signals and exit codes are
the native binary's own); verbs implemented in Python (scenarios, cluster
bring-up) run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable, Dict, List, Optional

from omnirelay._native import NativeBinaryNotFound, find_native_binary

# Python-side verbs: name -> (one-line help, handler(argv) -> exit code).
PYTHON_VERBS: Dict[str, "tuple[str, Callable[[List[str]], int]]"] = {}


def register_verb(name: str, help_text: str):
    """Decorator used by Python subsystems to add a verb to ``omnirelay``."""

    def wrap(handler: Callable[[List[str]], int]) -> Callable[[List[str]], int]:
        PYTHON_VERBS[name] = (help_text, handler)
        return handler

    return wrap


def _native_help(binary) -> str:
    result = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=False)
    return result.stdout


def main(argv: Optional[List[str]] = None) -> int:
    import omnirelay.harness.verbs  # noqa: F401  (registers `up` and `scenario`)
    import omnirelay.harness.stack_verbs  # noqa: F401  (registers `stack`)
    import omnirelay.resourcelease_verbs  # noqa: F401  (registers `resourcelease`)
    import omnirelay.mesh  # noqa: F401  (registers `mesh`)
    import omnirelay.harness.leadership  # noqa: F401  (registers `mesh leaders|promote`)
    import omnirelay.shards  # noqa: F401  (registers `mesh shards`)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PYTHON_VERBS:
        # No input may crash a verb with a traceback: usage errors exit 2
        # (argparse's SystemExit passes through), failures are reported and exit 1.
        try:
            return PYTHON_VERBS[argv[0]][1](argv[1:])
        except KeyboardInterrupt:
            return 130
        except Exception as error:  # noqa: BLE001 - the verb's last line of defence
            print(f"omnirelay {argv[0]}: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
    try:
        binary = find_native_binary()
    except NativeBinaryNotFound as error:
        print(f"omnirelay: {error}", file=sys.stderr)
        return 127
    if not argv or argv[0] in ("-h", "--help"):
        text = _native_help(binary)
        print(text.rstrip())
        if PYTHON_VERBS:
            width = max(len(name) for name in PYTHON_VERBS) + 2
            for name, (help_text, _) in sorted(PYTHON_VERBS.items()):
                print(f"  {name.ljust(max(width, 28))}{help_text}")
        return 0 if argv else 1
    os.execv(str(binary), [str(binary), *argv])
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main())
