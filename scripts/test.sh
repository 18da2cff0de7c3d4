#!/usr/bin/env bash
# Installs what OmniRelay needs, builds it, and runs every test:
#   1. C++ tests (GoogleTest via ctest) in an optimised build,
#   2. the Python package installed into .venv with pip (offline) and its pytest suites,
#   3. the C++ tests again under ASan+UBSan, and the concurrent ones under TSan.
# Exits non-zero if any stage fails. Knobs:
#   OMNIRELAY_SANITIZERS=0   skip stage 3 (quick local runs)
#   OMNIRELAY_BUILD_JOBS=N   parallel compile jobs (default: nproc)
#   PYTEST_ARGS="..."        extra pytest arguments
#   OMNIRELAY_FUZZ_SECONDS=N bounded libFuzzer run per fuzz target (default 30; 0 skips)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
JOBS=${OMNIRELAY_BUILD_JOBS:-$(nproc)}
stage() { printf '\n==== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

stage "dependencies"
bash scripts/install-deps.sh

stage "build (Release, with tests)"
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j "$JOBS"

stage "C++ tests"
ctest --test-dir build/release --output-on-failure -j "$JOBS"

stage "Python package (pip install into .venv, offline)"
[[ -x .venv/bin/python ]] || /usr/bin/python3 -m venv --system-site-packages .venv
# The in-tree backend reuses build/release instead of compiling the core again.
OMNIRELAY_BUILD_DIR="$ROOT/build/release" .venv/bin/pip install --no-index --quiet --force-reinstall .
.venv/bin/python -c "import omnirelay; print('omnirelay', omnirelay.__version__, 'imported')"
.venv/bin/omnirelay --help >/dev/null

stage "Python tests"
# Run from outside the tree so the installed package (not python/) is what is tested.
(cd /tmp && "$ROOT/.venv/bin/python" -m pytest "$ROOT/tests" "$ROOT/scenarios" -q \
   -p no:cacheprovider --rootdir "$ROOT" ${PYTEST_ARGS:-})

if [[ "${OMNIRELAY_SANITIZERS:-1}" == "1" ]]; then
  stage "build (ASan+UBSan)"
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOMNIRELAY_SANITIZE=address \
    -DOMNIRELAY_BUILD_PYTHON=OFF -DOMNIRELAY_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/asan -j "$JOBS" --target omnirelay_tests
  stage "C++ tests under ASan+UBSan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan --output-on-failure -j "$JOBS"

  stage "build (TSan, concurrent tests only)"
  cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOMNIRELAY_SANITIZE=thread \
    -DOMNIRELAY_BUILD_PYTHON=OFF -DOMNIRELAY_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/tsan -j "$JOBS" --target omnirelay_tsan_tests
  stage "C++ tests under TSan"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir build/tsan -L tsan --output-on-failure -j "$JOBS"
fi

if [[ "${OMNIRELAY_FUZZ_SECONDS:-30}" != "0" ]]; then
  # libFuzzer needs clang; the targets exist only with -DOMNIRELAY_FUZZ=ON.
  stage "build (libFuzzer targets, clang, ASan)"
  cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DOMNIRELAY_FUZZ=ON \
    -DOMNIRELAY_SANITIZE=address -DOMNIRELAY_BUILD_PYTHON=OFF -DOMNIRELAY_BUILD_BENCHMARKS=OFF \
    -DOMNIRELAY_BUILD_TESTS=OFF >/dev/null
  cmake --build build/fuzz -j "$JOBS" --target h2relay_fuzz
  stage "fuzz: the frame relay's inbound HTTP/2 session (${OMNIRELAY_FUZZ_SECONDS:-30}s)"
  mkdir -p build/fuzz/corpus/h2relay
  ASAN_OPTIONS=detect_leaks=1 build/fuzz/cpp/omnirelay/h2relay/h2relay_fuzz \
    -dict=cpp/omnirelay/h2relay/frame_relay_fuzz.dict \
    -max_total_time="${OMNIRELAY_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 -print_final_stats=1 \
    build/fuzz/corpus/h2relay
fi

stage "all tests passed"
