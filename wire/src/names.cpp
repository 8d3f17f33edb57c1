#include "inferscope/wire/names.hpp"

namespace inferscope::wire {

std::optional<AlertKind> alert_kind_from_name(std::string_view name) {
  for (uint8_t k = 0; k < kAlertKindCount; ++k)
    if (name == to_string(static_cast<AlertKind>(k))) return static_cast<AlertKind>(k);
  return std::nullopt;
}

std::optional<RecordKind> record_kind_from_name(std::string_view name) {
  for (uint8_t k = 0; k < kRecordKindCount; ++k)
    if (name == to_string(static_cast<RecordKind>(k))) return static_cast<RecordKind>(k);
  return std::nullopt;
}

std::string alert_event_name(const AlertEpisode& alert) {
  std::string n = std::string(to_string(alert.kind)) + " layer " + std::to_string(alert.layer);
  if (alert.kind != AlertKind::kDropBurst) n += " expert " + std::to_string(alert.expert);
  return n;
}

std::optional<AlertKind> alert_kind_of_event_name(std::string_view event_name) {
  return alert_kind_from_name(event_name.substr(0, event_name.find(' ')));
}

}  // namespace inferscope::wire
