#include "endpoint.hpp"

#include <charconv>

namespace inferscope::agent::detail {

bool parse_endpoint(std::string_view address, Endpoint& out, std::string& error) {
  constexpr std::string_view kTcp = "tcp://";
  constexpr std::string_view kUnix = "unix://";
  out = Endpoint{};
  if (address.starts_with(kUnix)) {
    out.kind = Endpoint::Kind::kUnix;
    out.path = std::string(address.substr(kUnix.size()));
    if (out.path.empty()) {
      error = "unix socket address has no path: '" + std::string(address) + "'";
      return false;
    }
    // sockaddr_un::sun_path is 108 bytes including the terminating NUL.
    if (out.path.size() > 107) {
      error = "unix socket path longer than 107 bytes: '" + out.path + "'";
      return false;
    }
    return true;
  }
  std::string_view rest = address;
  if (rest.starts_with(kTcp))
    rest.remove_prefix(kTcp.size());
  else if (rest.find("://") != std::string_view::npos) {
    error = "unsupported collector scheme in '" + std::string(address) +
            "' (use tcp://host:port or unix:///path)";
    return false;
  }
  const auto colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    error = "collector address needs host:port: '" + std::string(address) + "'";
    return false;
  }
  std::string_view host = rest.substr(0, colon);
  std::string_view port = rest.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);  // [::1]:7431
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc{} || ptr != port.data() + port.size() || value == 0 || value > 65535) {
    error = "bad collector port in '" + std::string(address) + "'";
    return false;
  }
  out.kind = Endpoint::Kind::kTcp;
  out.host = std::string(host);
  out.port = static_cast<uint16_t>(value);
  return true;
}

}  // namespace inferscope::agent::detail
