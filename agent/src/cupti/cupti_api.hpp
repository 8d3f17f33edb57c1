// CUPTI and the CUDA driver, loaded with dlopen when tracing is asked for.
//
// The agent library has no DT_NEEDED on libcupti, libcudart or libcuda: a
// CPU-only host links it with -linferscope_agent alone, and a CUDA host pays
// for loading CUPTI only when it sets Config::cupti (INFERSCOPE_CUPTI=1).
// cupti_tracer.cpp calls CUPTI only through the table below; the prototypes
// come from the toolkit's headers at build time (decltype), so a signature
// change there is a compile error here, not a crash.
//
// Where the library is looked for, first hit wins:
//   1. $INFERSCOPE_CUPTI_LIBRARY (a path or a soname; when set, nothing else
//      is tried, so a wrong value is reported rather than papered over);
//   2. libcupti.so.<major of the toolkit we were built with>, then libcupti.so,
//      through the usual search (LD_LIBRARY_PATH, ld.so.cache, RUNPATH);
//   3. the libcupti CMake found at build time (INFERSCOPE_CUPTI_BUILD_PATH).
#pragma once

#include <cuda.h>
#include <cupti.h>

#include <string>

namespace inferscope::agent::detail {

// Every CUPTI entry point the tracer uses. X(name, required): a missing
// required one makes the load fail; a missing optional one stays nullptr.
#define INFERSCOPE_CUPTI_FUNCTIONS(X)              \
  X(cuptiGetResultString, true)                    \
  X(cuptiActivityRegisterTimestampCallback, false) \
  X(cuptiSetThreadIdType, false)                   \
  X(cuptiActivityRegisterCallbacks, true)          \
  X(cuptiGetTimestamp, true)                       \
  X(cuptiActivityEnable, true)                     \
  X(cuptiActivityDisable, true)                    \
  X(cuptiActivityFlushAll, true)                   \
  X(cuptiActivityPushExternalCorrelationId, true)  \
  X(cuptiActivityPopExternalCorrelationId, true)   \
  X(cuptiActivityGetNextRecord, true)              \
  X(cuptiGetCallbackName, true)                    \
  X(cuptiActivityGetNumDroppedRecords, true)       \
  X(cuptiSubscribe, false)                         \
  X(cuptiUnsubscribe, false)                       \
  X(cuptiEnableCallback, false)                    \
  X(cuptiEnableDomain, false)                      \
  X(cuptiGetGraphNodeId, false)                    \
  X(cuptiFinalize, false)

struct CuptiApi {
#define INFERSCOPE_CUPTI_MEMBER(name, required) decltype(&::name) name = nullptr;
  INFERSCOPE_CUPTI_FUNCTIONS(INFERSCOPE_CUPTI_MEMBER)
#undef INFERSCOPE_CUPTI_MEMBER
  std::string path;  // the library that was loaded
};

// The table, loaded once per process (later calls return the same result).
// Nullptr when libcupti cannot be loaded or lacks a required entry point;
// error then says what was tried and how to fix it.
const CuptiApi* load_cupti(std::string& error);

// Number of CUDA devices, through the driver API (libcuda.so.1, dlopen'ed).
// -1 with error set when there is no usable driver.
int cuda_device_count(std::string& error);

}  // namespace inferscope::agent::detail
