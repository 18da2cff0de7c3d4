# omnirelay_library(NAME SOURCES ... DEPS ...)
#   One CMake library per subsystem folder, named omnirelay_<NAME>, with the
#   project's warning flags; include paths are rooted at cpp/ so headers are
#   included as "omnirelay/<subsystem>/<file>.h".
function(omnirelay_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(omnirelay_${name} STATIC ${ARG_SOURCES})
  target_include_directories(omnirelay_${name} PUBLIC ${PROJECT_SOURCE_DIR}/cpp)
  target_compile_options(omnirelay_${name} PRIVATE ${OMNIRELAY_WARNINGS})
  target_link_libraries(omnirelay_${name} PUBLIC ${ARG_DEPS})
endfunction()

# omnirelay_test(NAME SOURCES ... DEPS ... [LABELS ...])
#   A GoogleTest binary registered with ctest (one ctest entry per binary keeps
#   ctest fast; gtest reports the individual cases).
function(omnirelay_test name)
  if(NOT OMNIRELAY_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE ${OMNIRELAY_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE OMNIRELAY_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_test(NAME ${name} COMMAND ${name})
  # Every test binary, so the sanitizer CI stage builds tests only (not the CLI).
  if(NOT TARGET omnirelay_tests)
    add_custom_target(omnirelay_tests)
  endif()
  add_dependencies(omnirelay_tests ${name})
  set_tests_properties(${name} PROPERTIES TIMEOUT 300)
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
  # Tests labelled `tsan` (concurrent code) are what the ThreadSanitizer CI
  # stage builds and runs: `cmake --build build/tsan --target omnirelay_tsan_tests`.
  if("tsan" IN_LIST ARG_LABELS)
    if(NOT TARGET omnirelay_tsan_tests)
      add_custom_target(omnirelay_tsan_tests)
    endif()
    add_dependencies(omnirelay_tsan_tests ${name})
  endif()
endfunction()

# omnirelay_benchmark(NAME SOURCES ... DEPS ...)
#   Built with the tree, never registered with ctest: benchmarks print figures.
function(omnirelay_benchmark name)
  if(NOT OMNIRELAY_BUILD_BENCHMARKS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE ${OMNIRELAY_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} benchmark::benchmark benchmark::benchmark_main)
endfunction()
