// Collector addresses: "tcp://host:port", "unix:///path/to.sock", or "host:port".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace inferscope::agent::detail {

struct Endpoint {
  enum class Kind { kTcp, kUnix } kind = Kind::kTcp;
  std::string host;   // tcp
  uint16_t port = 0;  // tcp
  std::string path;   // unix
};

// False with a message in error when the address cannot be used.
bool parse_endpoint(std::string_view address, Endpoint& out, std::string& error);

}  // namespace inferscope::agent::detail
