# Every dependency is a Debian package installed by scripts/install-deps.sh.
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(ZLIB REQUIRED)                       # crc32 for frame checksums
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 CONFIG QUIET)
if(NOT TARGET CLI11::CLI11)
  # Debian's libcli11-dev ships a pkg-config file; the header is all we need.
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
endif()
find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)
add_library(inferscope_asio INTERFACE)
target_include_directories(inferscope_asio SYSTEM INTERFACE ${ASIO_INCLUDE_DIR})
# ASIO_DISABLE_STD_ALIGNED_ALLOC: asio picks aligned_alloc/free or operator
# new/delete for its handler memory depending on whether libstdc++'s config was
# included before asio's in each translation unit; two choices in one program
# allocate with one and free with the other (ASan: alloc-dealloc-mismatch in
# thread_info_base). One choice everywhere.
target_compile_definitions(inferscope_asio INTERFACE ASIO_STANDALONE ASIO_NO_DEPRECATED
                           ASIO_DISABLE_STD_ALIGNED_ALLOC)
target_link_libraries(inferscope_asio INTERFACE Threads::Threads)
find_package(prometheus-cpp CONFIG REQUIRED)
if(INFERSCOPE_TESTS)
  find_package(GTest REQUIRED)
endif()
if(INFERSCOPE_BENCHMARKS)
  find_package(benchmark REQUIRED)
endif()
if(INFERSCOPE_VIEWER)
  pkg_check_modules(IMGUI REQUIRED IMPORTED_TARGET imgui)
  find_package(glfw3 3.3 REQUIRED)
  find_package(OpenGL REQUIRED)
endif()
find_package(BLAS)
