# cmake --install: what a user of another engine needs (docs/install.md).
#   lib/      libinferscope_agent.so.<major> (+ libinferscope_agent_cuda.so with CUDA)
#   include/  inferscope/agent.h, agent.hpp, export.h, hot_path.hpp, wire/records.hpp (+ agent_cuda.hpp)
#   lib/cmake/inferscope/  inferscopeConfig.cmake: inferscope::agent (+ inferscope::agent_cuda)
#   lib/pkgconfig/         inferscope.pc (+ inferscope-cuda.pc)
#   bin/      inferscope-collector, inferscope-export, inferscope-engine, inferscope-viewer
#   lib/python3/dist-packages/inferscope/  the Python package (python/)
# Components: agent (library, headers, package files), programs and python; e.g.
# `cmake --install build --component agent` for the library alone.
# Everything is relocatable: the package config and the .pc file find the
# prefix from their own location, so `cmake --install build --prefix DIR` works
# for any DIR.
include(CMakePackageConfigHelpers)

set(INFERSCOPE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/inferscope)
set(INFERSCOPE_PKGCONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# [SECTION] Agent library, headers, CMake package -----------------------------
install(TARGETS inferscope_agent_shared EXPORT inferscopeTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT agent)
install(FILES
  agent/include/inferscope/agent.h
  agent/include/inferscope/agent.hpp
  agent/include/inferscope/export.h
  agent/include/inferscope/hot_path.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/inferscope COMPONENT agent)
# agent.hpp's types (Config::model, Stats, the record enums) come from here.
install(FILES wire/include/inferscope/wire/records.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/inferscope/wire COMPONENT agent)
install(EXPORT inferscopeTargets NAMESPACE inferscope:: DESTINATION ${INFERSCOPE_CMAKE_DIR}
  COMPONENT agent)

if(TARGET inferscope_agent_cuda_shared)
  install(TARGETS inferscope_agent_cuda_shared EXPORT inferscopeCudaTargets
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT agent)
  install(FILES agent/include/inferscope/agent_cuda.hpp
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/inferscope COMPONENT agent)
  install(EXPORT inferscopeCudaTargets NAMESPACE inferscope:: DESTINATION ${INFERSCOPE_CMAKE_DIR}
  COMPONENT agent)
endif()

configure_package_config_file(cmake/install/inferscopeConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/inferscopeConfig.cmake
  INSTALL_DESTINATION ${INFERSCOPE_CMAKE_DIR})
# 0.x: a new minor may change the ABI, so only the same minor is compatible.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/inferscopeConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/inferscopeConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/inferscopeConfigVersion.cmake
  DESTINATION ${INFERSCOPE_CMAKE_DIR} COMPONENT agent)

# [SECTION] pkg-config ---------------------------------------------------------
# prefix is derived from ${pcfiledir}, so the file is right wherever the tree lands.
file(RELATIVE_PATH INFERSCOPE_PC_TO_PREFIX
  /prefix/${INFERSCOPE_PKGCONFIG_DIR} /prefix)
configure_file(cmake/install/inferscope.pc.in ${CMAKE_CURRENT_BINARY_DIR}/inferscope.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/inferscope.pc DESTINATION ${INFERSCOPE_PKGCONFIG_DIR} COMPONENT agent)
if(TARGET inferscope_agent_cuda_shared)
  set(INFERSCOPE_CUDA_INCLUDE_DIR ${CUDAToolkit_INCLUDE_DIRS})
  set(INFERSCOPE_CUDA_LIBRARY_DIR ${CUDAToolkit_LIBRARY_DIR})
  configure_file(cmake/install/inferscope-cuda.pc.in
    ${CMAKE_CURRENT_BINARY_DIR}/inferscope-cuda.pc @ONLY)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/inferscope-cuda.pc
    DESTINATION ${INFERSCOPE_PKGCONFIG_DIR} COMPONENT agent)
endif()

# [SECTION] Programs -----------------------------------------------------------
foreach(program inferscope-collector inferscope-export inferscope-engine inferscope-viewer)
  if(TARGET ${program})
    # OPTIONAL: a partial build (e.g. `ninja inferscope-collector`) installs what it built.
    install(TARGETS ${program} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT programs
      OPTIONAL)
  endif()
endforeach()

# [SECTION] Python package -----------------------------------------------------
# python/inferscope, pure Python; _install_paths.py tells it where the library
# sits relative to itself, so an installed tree needs no INFERSCOPE_AGENT_LIBRARY.
# The default is where Debian's python3 looks under /usr/local.
set(INFERSCOPE_PYTHON_INSTALL_DIR "lib/python3/dist-packages" CACHE STRING
  "where cmake --install puts the inferscope Python package, relative to the prefix")
install(DIRECTORY python/inferscope DESTINATION ${INFERSCOPE_PYTHON_INSTALL_DIR}
  COMPONENT python PATTERN __pycache__ EXCLUDE)
file(RELATIVE_PATH INFERSCOPE_PY_TO_LIBDIR
  /prefix/${INFERSCOPE_PYTHON_INSTALL_DIR}/inferscope /prefix/${CMAKE_INSTALL_LIBDIR})
configure_file(cmake/install/_install_paths.py.in
  ${CMAKE_CURRENT_BINARY_DIR}/python/_install_paths.py @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/python/_install_paths.py
  DESTINATION ${INFERSCOPE_PYTHON_INSTALL_DIR}/inferscope COMPONENT python)
