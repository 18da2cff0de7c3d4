"""In-tree PEP 517 build backend for OmniRelay.

Why: pip's default build isolation installs the build backend from PyPI,
which is unreachable here (Debian's archive is the only registry). This
backend lives in the source tree (``backend-path``) and needs nothing beyond
the standard library, CMake and the Debian packages of
``scripts/install-deps.sh``; so plain ``pip install .`` works offline, with or
without build isolation.

What it does: configures and builds the C++ core with CMake (targets
``_core``, the pybind11 module, and ``omnirelay-native``, the CLI binary),
then assembles the wheel by hand: the pure-Python package from ``python/``,
the extension module, the native binary as ``omnirelay/bin/omnirelay-native``,
and ``.dist-info`` with the ``omnirelay`` console script and the pytest plugin
entry point.

Environment knobs:
  OMNIRELAY_BUILD_DIR   reuse this CMake build tree (CI reuses its test build)
  OMNIRELAY_BUILD_JOBS  parallel compile jobs (default: number of CPUs)
  OMNIRELAY_BUILD_TYPE  CMake build type (default Release)
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

SOURCE_DIR = Path(__file__).resolve().parent.parent
PACKAGE = "omnirelay"


# ----------------------------------------------------------------- metadata
def _project() -> dict:
    with open(SOURCE_DIR / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]


def _dist_name() -> str:
    project = _project()
    return f"{project['name']}-{project['version']}"


def _metadata_text() -> str:
    project = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3.11')}",
    ]
    for dependency in project.get("dependencies", []):
        lines.append(f"Requires-Dist: {dependency}")
    readme = SOURCE_DIR / "README.md"
    lines.append("Description-Content-Type: text/markdown")
    lines.append("")
    lines.append(readme.read_text(encoding="utf-8") if readme.exists() else "")
    return "\n".join(lines)


def _entry_points_text() -> str:
    project = _project()
    out = []
    scripts = project.get("scripts", {})
    if scripts:
        out.append("[console_scripts]")
        out.extend(f"{name} = {target}" for name, target in scripts.items())
        out.append("")
    for group, entries in project.get("entry-points", {}).items():
        out.append(f"[{group}]")
        out.extend(f"{name} = {target}" for name, target in entries.items())
        out.append("")
    return "\n".join(out)


def _wheel_tag() -> str:
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform_tag = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{python_tag}-{python_tag}-{platform_tag}"


def _wheel_text() -> str:
    return "\n".join(
        [
            "Wheel-Version: 1.0",
            "Generator: omnirelay_build",
            "Root-Is-Purelib: false",
            f"Tag: {_wheel_tag()}",
            "",
        ]
    )


# ----------------------------------------------------------------- C++ build
def _build_native() -> Dict[str, Path]:
    """Builds the extension module and the CLI; returns their paths."""
    build_dir = Path(os.environ.get("OMNIRELAY_BUILD_DIR", SOURCE_DIR / "build" / "wheel"))
    jobs = os.environ.get("OMNIRELAY_BUILD_JOBS", str(os.cpu_count() or 2))
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError(
            "cmake not found: run scripts/install-deps.sh first (it installs the Debian build deps)"
        )
    if not (build_dir / "CMakeCache.txt").exists():
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(
            [
                cmake,
                "-S",
                str(SOURCE_DIR),
                "-B",
                str(build_dir),
                *generator,
                f"-DCMAKE_BUILD_TYPE={os.environ.get('OMNIRELAY_BUILD_TYPE', 'Release')}",
                f"-DPython3_EXECUTABLE={sys.executable}",
                "-DOMNIRELAY_BUILD_TESTS=OFF",
                "-DOMNIRELAY_BUILD_BENCHMARKS=OFF",
                "-DOMNIRELAY_BUILD_PYTHON=ON",
            ]
        )
    _run([cmake, "--build", str(build_dir), "--target", "_core", "omnirelay-native", "-j", jobs])
    modules = sorted((build_dir / "bindings" / "python" / PACKAGE).glob("_core*.so"))
    native = build_dir / "cpp" / "omnirelay" / "cli" / "omnirelay-native"
    if not modules or not native.exists():
        raise RuntimeError(f"build finished but artifacts are missing under {build_dir}")
    return {"module": modules[-1], "native": native}


def _run(command: List[str]) -> None:
    print("omnirelay_build:", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=sys.stderr)


# ----------------------------------------------------------------- wheel writing
class _WheelWriter:
    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self._records: List[str] = []

    def add_bytes(self, arcname: str, data: bytes, executable: bool = False) -> None:
        info = zipfile.ZipInfo(arcname, date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = ((0o755 if executable else 0o644) | 0o100000) << 16
        self._zip.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self._records.append(f"{arcname},sha256={digest},{len(data)}")

    def add_file(self, arcname: str, path: Path, executable: bool = False) -> None:
        self.add_bytes(arcname, path.read_bytes(), executable)

    def close(self, record_name: str) -> None:
        self._records.append(f"{record_name},,")
        self._zip.writestr(record_name, "\n".join(self._records) + "\n")
        self._zip.close()


def _python_sources() -> List[Path]:
    root = SOURCE_DIR / "python" / PACKAGE
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        if path.suffix in {".so", ".pyc"} or "bin" in path.relative_to(root).parts[:1]:
            continue  # in-tree build products of editable installs
        files.append(path)
    return files


def _write_dist_info(writer: _WheelWriter, dist_info: str) -> None:
    writer.add_bytes(f"{dist_info}/METADATA", _metadata_text().encode())
    writer.add_bytes(f"{dist_info}/WHEEL", _wheel_text().encode())
    writer.add_bytes(f"{dist_info}/entry_points.txt", _entry_points_text().encode())
    writer.add_bytes(f"{dist_info}/top_level.txt", f"{PACKAGE}\n".encode())


# ----------------------------------------------------------------- PEP 517 hooks
def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> List[str]:
    return []


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings=None) -> str:
    dist_info = Path(metadata_directory) / f"{_dist_name()}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(_metadata_text(), encoding="utf-8")
    (dist_info / "WHEEL").write_text(_wheel_text(), encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(_entry_points_text(), encoding="utf-8")
    return dist_info.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory: str, config_settings=None, metadata_directory=None) -> str:
    artifacts = _build_native()
    name = f"{_dist_name()}-{_wheel_tag()}.whl"
    writer = _WheelWriter(Path(wheel_directory) / name)
    root = SOURCE_DIR / "python"
    for path in _python_sources():
        writer.add_file(path.relative_to(root).as_posix(), path)
    # Topologies and scenarios ship inside the package so `omnirelay up NAME`
    # and `omnirelay scenario run NAME` work outside a source checkout.
    for folder, pattern in (("topologies", "*.yaml"), ("scenarios", "*.py")):
        for path in sorted((SOURCE_DIR / folder).glob(pattern)):
            writer.add_file(f"{PACKAGE}/{folder}/{path.name}", path)
    # Scenario suites in subfolders (scenarios/hyperscale/) with their golden files.
    for pattern in ("*/*.py", "*/golden/**/*.json"):
        for path in sorted((SOURCE_DIR / "scenarios").glob(pattern)):
            writer.add_file(f"{PACKAGE}/scenarios/{path.relative_to(SOURCE_DIR / 'scenarios').as_posix()}", path)
    # The client-facing .proto files: omnirelay.samples.my_service generates
    # its stubs from them at first use (generated code is never shipped).
    for path in sorted((SOURCE_DIR / "proto").rglob("*.proto")):
        writer.add_file(f"{PACKAGE}/proto/{path.relative_to(SOURCE_DIR / 'proto').as_posix()}", path)
    writer.add_file(f"{PACKAGE}/{artifacts['module'].name}", artifacts["module"])
    writer.add_file(f"{PACKAGE}/bin/omnirelay-native", artifacts["native"], executable=True)
    dist_info = f"{_dist_name()}.dist-info"
    _write_dist_info(writer, dist_info)
    writer.close(f"{dist_info}/RECORD")
    return name


def build_editable(wheel_directory: str, config_settings=None, metadata_directory=None) -> str:
    """PEP 660: the wheel holds a .pth pointing at python/; the native pieces
    are copied into python/omnirelay/ (git-ignored) so edits to .py files take
    effect at once and `pip install -e .` again refreshes the C++ parts."""
    artifacts = _build_native()
    package_dir = SOURCE_DIR / "python" / PACKAGE
    for old in package_dir.glob("_core*.so"):
        old.unlink()
    shutil.copy2(artifacts["module"], package_dir / artifacts["module"].name)
    (package_dir / "bin").mkdir(exist_ok=True)
    shutil.copy2(artifacts["native"], package_dir / "bin" / "omnirelay-native")
    name = f"{_dist_name()}-{_wheel_tag()}.whl"
    writer = _WheelWriter(Path(wheel_directory) / name)
    writer.add_bytes(f"__editable__.{_dist_name()}.pth", f"{SOURCE_DIR / 'python'}\n".encode())
    dist_info = f"{_dist_name()}.dist-info"
    _write_dist_info(writer, dist_info)
    writer.close(f"{dist_info}/RECORD")
    return name


def build_sdist(sdist_directory: str, config_settings=None) -> str:
    name = _dist_name()
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=SOURCE_DIR, capture_output=True, text=True, check=False
    )
    if tracked.returncode == 0:
        files = [SOURCE_DIR / line for line in tracked.stdout.splitlines() if line]
    else:  # not a git checkout (e.g. an unpacked sdist): everything but build products
        files = [
            p
            for p in SOURCE_DIR.rglob("*")
            if p.is_file() and not any(part.startswith(("build", ".venv", ".git")) for part in p.parts)
        ]
    path = Path(sdist_directory) / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for file in files:
            if file.is_file():
                archive.add(file, arcname=f"{name}/{file.relative_to(SOURCE_DIR).as_posix()}")
        pkg_info = _metadata_text().encode()
        info = tarfile.TarInfo(f"{name}/PKG-INFO")
        info.size = len(pkg_info)
        archive.addfile(info, io.BytesIO(pkg_info))
    return path.name
