# Warnings are errors for our own code (generated protobuf code gets its own,
# laxer target flags in proto/CMakeLists.txt).
set(OMNIRELAY_WARNINGS -Wall -Wextra -Wpedantic -Werror -Wno-unused-parameter)

if(OMNIRELAY_FUZZ)
  # libFuzzer needs clang (Debian's clang-14 + libfuzzer-14-dev). Every
  # library gets coverage instrumentation and ASan+UBSan; the fuzz_* binaries
  # add the libFuzzer driver (tests/fuzz/CMakeLists.txt).
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "OMNIRELAY_FUZZ=ON needs clang: -DCMAKE_CXX_COMPILER=clang++-14")
  endif()
  if(NOT OMNIRELAY_SANITIZE STREQUAL "")
    message(FATAL_ERROR "OMNIRELAY_FUZZ=ON brings its own sanitizers; leave OMNIRELAY_SANITIZE empty")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer -gline-tables-only)
  # Boost 1.74 only enables Asio's C++20 coroutines for GCC (or clang with the
  # coroutines TS); clang 14 with libstdc++'s <coroutine> supports them too.
  add_compile_definitions(BOOST_ASIO_HAS_CO_AWAIT=1 BOOST_ASIO_HAS_STD_COROUTINE=1)
  add_link_options(-fsanitize=address,undefined)
endif()

if(OMNIRELAY_SANITIZE STREQUAL "address")
  # ASan + UBSan together; UBSan findings abort so ctest sees them as failures.
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
elseif(OMNIRELAY_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT OMNIRELAY_SANITIZE STREQUAL "")
  message(FATAL_ERROR "OMNIRELAY_SANITIZE must be '', 'address' or 'thread'")
endif()
if(NOT OMNIRELAY_SANITIZE STREQUAL "" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # GCC 12's flow analysis misfires on sanitizer-instrumented system headers
  # (std::regex, std::function, Asio coroutine frames): known false positives,
  # silenced only in sanitizer builds; the Release build keeps them as errors.
  list(APPEND OMNIRELAY_WARNINGS -Wno-maybe-uninitialized -Wno-mismatched-new-delete)
endif()
if(OMNIRELAY_SANITIZE STREQUAL "thread" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # GCC warns that TSan does not model std::atomic_thread_fence; the fences are
  # Boost.Asio's (inlined into our code), not ours. Our code uses none.
  list(APPEND OMNIRELAY_WARNINGS -Wno-tsan)
endif()

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()
