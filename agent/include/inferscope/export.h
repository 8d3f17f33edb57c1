/* inferscope agent: symbol visibility for the public API.
 *
 * libinferscope_agent.so is built with hidden visibility: only declarations
 * marked INFERSCOPE_API (the C API in agent.h, the C++ API in agent.hpp and
 * agent_cuda.hpp) are exported, so the agent's internals, its copy of the
 * wire library and the standard-library templates it instantiates never clash
 * with the host's. INFERSCOPE_LOCAL keeps a type nested in an exported class
 * (Agent::Impl) out of the export table. A version script (agent/src/
 * exports.map) is the second gate: it also hides the std:: template
 * instantiations that -fvisibility=hidden cannot. */
#ifndef INFERSCOPE_EXPORT_H
#define INFERSCOPE_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define INFERSCOPE_API __attribute__((visibility("default")))
#define INFERSCOPE_LOCAL __attribute__((visibility("hidden")))
#else
#define INFERSCOPE_API
#define INFERSCOPE_LOCAL
#endif

#endif /* INFERSCOPE_EXPORT_H */
