# Warnings on and clean for every target of ours; sanitizers as one switch.
add_library(inferscope_warnings INTERFACE)
target_compile_options(inferscope_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-missing-field-initializers>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wshadow=local>)

if(INFERSCOPE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

# Fuzzing: libFuzzer sees coverage only in code compiled with coverage
# instrumentation. Instrument everything of ours in the fuzz build (the wire
# library, the collector's pipeline, the viewer's loader), not just the harness;
# only the fuzz binaries themselves link libFuzzer (tests/fuzz/CMakeLists.txt).
if(INFERSCOPE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "INFERSCOPE_FUZZ needs clang (CC=clang CXX=clang++)")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
