// inferscope wire: the names of record and alert kinds in text formats, both
// directions, written once.
//
// to_string(kind) (records.hpp) is the one table of names; the parsers here
// invert it over every kind (kAlertKindCount, kRecordKindCount), so a kind added
// to the enum and to to_string() is read back without touching a second list.
// The Chrome / Perfetto JSON export names an alert event with alert_event_name()
// and the viewer's importer reads the kind back with alert_kind_of_event_name().
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

// "hot_rank" -> kHotRank; nullopt for a name no kind has.
std::optional<AlertKind> alert_kind_from_name(std::string_view name);
std::optional<RecordKind> record_kind_from_name(std::string_view name);

// The event name of an exported alert: "<kind> layer L expert E" ("<kind> layer L"
// for a drop burst, which names no expert).
std::string alert_event_name(const AlertEpisode& alert);
// The kind an exported alert event's name starts with (its first word, so
// "hot_rank layer 3 expert 5 opened" is kHotRank); nullopt when none.
std::optional<AlertKind> alert_kind_of_event_name(std::string_view event_name);

}  // namespace inferscope::wire
