// inferscope collector: listen addresses as written on the command line.
//   tcp://127.0.0.1:7431   unix:///run/inferscope.sock   127.0.0.1:9464   [::1]:7433
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace inferscope::collector {

struct Endpoint {
  enum class Kind { kTcp, kUnix } kind = Kind::kTcp;
  std::string host;   // tcp: address literal or "localhost"
  uint16_t port = 0;  // 0: pick a free port
  std::string path;   // unix socket path

  std::string to_string() const;  // tcp://host:port or unix://path
};

// nullopt with error set when the text is not an endpoint.
std::optional<Endpoint> parse_endpoint(const std::string& text, std::string& error);

}  // namespace inferscope::collector
