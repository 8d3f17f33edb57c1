# INFERSCOPE_CUDA=AUTO builds the GPU parts when the toolkit and CUPTI are found;
# ON insists; OFF builds everything else. The result is INFERSCOPE_HAVE_CUDA.
set(INFERSCOPE_HAVE_CUDA OFF)
if(NOT INFERSCOPE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  find_package(CUDAToolkit QUIET)
  find_library(INFERSCOPE_CUPTI_LIBRARY cupti
    HINTS ${CUDAToolkit_LIBRARY_ROOT} /usr/local/cuda
    PATH_SUFFIXES lib lib64 extras/CUPTI/lib64)
  find_path(INFERSCOPE_CUPTI_INCLUDE cupti.h
    HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include /usr/local/cuda/extras/CUPTI/include)
  if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND AND INFERSCOPE_CUPTI_LIBRARY AND INFERSCOPE_CUPTI_INCLUDE)
    set(INFERSCOPE_HAVE_CUDA ON)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    # Headers only: the agent loads libcupti with dlopen (agent/src/cupti/
    # cupti_api.hpp), so nothing links it.
    add_library(inferscope_cupti_headers INTERFACE)
    target_include_directories(inferscope_cupti_headers SYSTEM INTERFACE
      ${INFERSCOPE_CUPTI_INCLUDE} ${CUDAToolkit_INCLUDE_DIRS})
    message(STATUS "inferscope: CUDA ${CUDAToolkit_VERSION} and CUPTI found, GPU parts on (sm_${CMAKE_CUDA_ARCHITECTURES})")
  elseif(INFERSCOPE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "INFERSCOPE_CUDA=ON but the CUDA toolkit or CUPTI was not found")
  else()
    message(STATUS "inferscope: CUDA toolkit or CUPTI not found, GPU parts off")
  endif()
endif()
