#!/usr/bin/env bash
# Installs what OmniRelay needs, builds it, and runs every test:
#   1. C++ tests (GoogleTest via ctest) in an optimised build,
#   2. the Python package installed into .venv with pip (offline) and its pytest suites,
#   3. the C++ tests again under ASan+UBSan, and the concurrent ones under TSan,
#   4. every libFuzzer target for a bounded time (clang, ASan+UBSan).
# Exits non-zero if any stage fails, if ctest finds no tests, or if any pytest
# test or module is skipped (--fail-on-skip). Knobs:
#   OMNIRELAY_SANITIZERS=0   skip stages 3 and 4 (quick local runs)
#   OMNIRELAY_FUZZ_SECONDS=N seconds per fuzz target (default 20)
#   OMNIRELAY_BUILD_JOBS=N   parallel compile jobs (default: nproc)
#   PYTEST_ARGS="..."        extra pytest arguments
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
JOBS=${OMNIRELAY_BUILD_JOBS:-$(nproc)}
# ccache (installed by install-deps) hits across clones and build trees: paths
# under the checkout are hashed relative to it.
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
stage() { printf '\n==== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

stage "dependencies"
bash scripts/install-deps.sh

stage "format (clang-format, the repository's .clang-format)"
# The style is clang-format's; drift fails here rather than piling up.
git ls-files -z 'cpp/*.cc' 'cpp/*.h' 'bindings/*.cc' 'bindings/*.h' 'tests/*.cc' 'tests/*.h' \
  'benchmarks/*.cc' | xargs -0 clang-format --dry-run --Werror

stage "build (Release, with tests)"
# Force the tests on: `pip install .` / scripts/demo.sh configure this same tree
# with OMNIRELAY_BUILD_TESTS=OFF, and a cached OFF would leave ctest nothing to run.
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DOMNIRELAY_BUILD_TESTS=ON >/dev/null
cmake --build build/release -j "$JOBS"

stage "C++ tests"
ctest --test-dir build/release --output-on-failure --no-tests=error -j "$JOBS"

stage "Python package (pip install into .venv, offline)"
[[ -x .venv/bin/python ]] || /usr/bin/python3 -m venv --system-site-packages .venv
# The in-tree backend reuses build/release instead of compiling the core again.
OMNIRELAY_BUILD_DIR="$ROOT/build/release" .venv/bin/pip install --no-index --quiet --force-reinstall .
.venv/bin/python -c "import omnirelay; print('omnirelay', omnirelay.__version__, 'imported')"
.venv/bin/omnirelay --help >/dev/null

stage "Python tests"
# Run from outside the tree so the installed package (not python/) is what is tested.
(cd /tmp && "$ROOT/.venv/bin/python" -m pytest "$ROOT/tests" "$ROOT/scenarios" -q \
   -p no:cacheprovider --rootdir "$ROOT" --fail-on-skip ${PYTEST_ARGS:-})

if [[ "${OMNIRELAY_SANITIZERS:-1}" == "1" ]]; then
  stage "build (ASan+UBSan)"
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOMNIRELAY_SANITIZE=address \
    -DOMNIRELAY_BUILD_PYTHON=OFF -DOMNIRELAY_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/asan -j "$JOBS" --target omnirelay_tests
  stage "C++ tests under ASan+UBSan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan --output-on-failure --no-tests=error -j "$JOBS"

  stage "build (TSan, concurrent tests only)"
  cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOMNIRELAY_SANITIZE=thread \
    -DOMNIRELAY_BUILD_PYTHON=OFF -DOMNIRELAY_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/tsan -j "$JOBS" --target omnirelay_tsan_tests
  stage "C++ tests under TSan"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir build/tsan -L tsan --output-on-failure --no-tests=error -j "$JOBS"

  stage "build (libFuzzer targets, clang + ASan+UBSan)"
  cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOMNIRELAY_FUZZ=ON \
    -DCMAKE_CXX_COMPILER=clang++-14 -DOMNIRELAY_BUILD_TESTS=OFF \
    -DOMNIRELAY_BUILD_PYTHON=OFF -DOMNIRELAY_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/fuzz -j "$JOBS" --target omnirelay_fuzzers
  stage "fuzzing (${OMNIRELAY_FUZZ_SECONDS:-20}s per target)"
  # Each target starts from a copy of its checked-in corpus (new inputs stay
  # out of the tree); a crash fails CI and leaves crash-* in build/fuzz/findings
  # to be added to tests/fuzz/corpus/<target>/ as a regression input.
  for corpus in tests/fuzz/corpus/*/; do
    target=$(basename "$corpus")
    work="build/fuzz/findings/$target"
    rm -rf "$work" && mkdir -p "$work/corpus" && cp "$corpus"* "$work/corpus/"
    dict=()
    [[ -f "tests/fuzz/$target.dict" ]] && dict=("-dict=tests/fuzz/$target.dict")
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "build/fuzz/tests/fuzz/fuzz_$target" -max_total_time="${OMNIRELAY_FUZZ_SECONDS:-20}" \
      -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$work/" -print_final_stats=1 "${dict[@]}" \
      "$work/corpus" 2>"$work/log" || { tail -60 "$work/log"; exit 1; }
    { grep -E "^stat::(number_of_executed_units|new_units_added)" "$work/log" || true; } | sed "s/^/$target: /"
  done
fi

stage "all tests passed"
