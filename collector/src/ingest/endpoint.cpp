#include "inferscope/collector/endpoint.hpp"

#include <charconv>

namespace inferscope::collector {

std::string Endpoint::to_string() const {
  if (kind == Kind::kUnix) return "unix://" + path;
  const bool v6 = host.find(':') != std::string::npos;
  return "tcp://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::optional<Endpoint> parse_endpoint(const std::string& text, std::string& error) {
  Endpoint e;
  std::string rest = text;
  if (rest.rfind("unix://", 0) == 0) {
    e.kind = Endpoint::Kind::kUnix;
    e.path = rest.substr(7);
    if (e.path.empty() || e.path.size() >= 108) {  // sun_path limit
      error = "bad unix socket path in \"" + text + "\" (empty or longer than 107 bytes)";
      return std::nullopt;
    }
    return e;
  }
  if (rest.rfind("tcp://", 0) == 0) rest = rest.substr(6);
  size_t colon;
  if (!rest.empty() && rest[0] == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      error = "bad address \"" + text + "\": expected [v6-address]:port";
      return std::nullopt;
    }
    e.host = rest.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = rest.rfind(':');
    if (colon == std::string::npos) {
      error = "bad address \"" + text + "\": expected host:port, tcp://host:port or unix:///path";
      return std::nullopt;
    }
    e.host = rest.substr(0, colon);
  }
  const std::string port = rest.substr(colon + 1);
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (e.host.empty() || port.empty() || ec != std::errc() || ptr != port.data() + port.size() ||
      value > 65535) {
    error = "bad address \"" + text + "\": host and a port 0-65535 needed";
    return std::nullopt;
  }
  e.port = static_cast<uint16_t>(value);
  return e;
}

}  // namespace inferscope::collector
