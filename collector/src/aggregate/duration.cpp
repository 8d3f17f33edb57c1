#include <cctype>
#include <charconv>

#include "inferscope/collector/options.hpp"

namespace inferscope::collector {

std::optional<int64_t> parse_duration_ns(std::string_view text) {
  double value = 0.0;
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == 0) return std::nullopt;
  // std::from_chars for double is available in GCC 12.
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + i, value);
  if (ec != std::errc() || ptr != text.data() + i) return std::nullopt;
  const std::string_view unit = text.substr(i);
  double scale = 0.0;
  if (unit.empty() || unit == "s")
    scale = 1e9;
  else if (unit == "ms")
    scale = 1e6;
  else if (unit == "us")
    scale = 1e3;
  else if (unit == "ns")
    scale = 1.0;
  else if (unit == "m")
    scale = 60e9;
  else if (unit == "h")
    scale = 3600e9;
  else
    return std::nullopt;
  const double ns = value * scale;
  if (!(ns >= 1.0) || ns > 1e18) return std::nullopt;
  return static_cast<int64_t>(ns);
}

}  // namespace inferscope::collector
