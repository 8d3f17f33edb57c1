#include "nvtx.hpp"

#if defined(INFERSCOPE_HAVE_NVTX) && __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define INFERSCOPE_NVTX_ON 1
#endif

namespace inferscope::agent::detail {

#ifdef INFERSCOPE_NVTX_ON
namespace {
nvtxDomainHandle_t domain() {
  static nvtxDomainHandle_t d = nvtxDomainCreateA("inferscope");
  return d;
}
}  // namespace

bool nvtx_available() {
  return true;
}

const void* nvtx_register(const std::string& name) {
  return nvtxDomainRegisterStringA(domain(), name.c_str());
}

void nvtx_push(const void* registered_string) {
  nvtxEventAttributes_t attr{};
  attr.version = NVTX_VERSION;
  attr.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  attr.messageType = NVTX_MESSAGE_TYPE_REGISTERED;
  attr.message.registered = static_cast<nvtxStringHandle_t>(const_cast<void*>(registered_string));
  nvtxDomainRangePushEx(domain(), &attr);
}

void nvtx_pop() {
  nvtxDomainRangePop(domain());
}
#else
bool nvtx_available() {
  return false;
}
const void* nvtx_register(const std::string&) {
  return nullptr;
}
void nvtx_push(const void*) {}
void nvtx_pop() {}
#endif

}  // namespace inferscope::agent::detail
