#include "inferscope/collector/placement.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

const std::vector<std::vector<uint32_t>>& Placement::for_layer(uint32_t layer) const {
  auto it = layers.find(layer);
  return it == layers.end() ? expert_to_ranks : it->second;
}

Placement Placement::from_single(const std::vector<uint32_t>& expert_to_rank) {
  Placement p;
  for (uint32_t r : expert_to_rank) {
    p.expert_to_ranks.push_back({r});
    p.ranks = std::max(p.ranks, r + 1);
  }
  return p;
}

namespace {

bool parse_table(const nlohmann::json& j, std::vector<std::vector<uint32_t>>& out,
                 uint32_t& max_rank, std::string& error, const std::string& where) {
  if (!j.is_array() || j.size() > wire::kMaxExperts) {
    error =
        where + ": expected an array of at most " + std::to_string(wire::kMaxExperts) + " experts";
    return false;
  }
  out.clear();
  for (size_t e = 0; e < j.size(); ++e) {
    const auto& item = j[e];
    std::vector<uint32_t> ranks;
    auto take = [&](const nlohmann::json& v) {
      if (!v.is_number_unsigned() || v.get<uint64_t>() >= wire::kMaxRanks) {
        error = where + "[" + std::to_string(e) + "]: rank must be an integer in [0, " +
                std::to_string(wire::kMaxRanks) + ")";
        return false;
      }
      ranks.push_back(v.get<uint32_t>());
      max_rank = std::max(max_rank, ranks.back() + 1);
      return true;
    };
    if (item.is_array()) {
      if (item.empty() || item.size() > 64) {
        error = where + "[" + std::to_string(e) + "]: 1 to 64 replicas per expert";
        return false;
      }
      for (const auto& v : item)
        if (!take(v)) return false;
    } else if (!take(item)) {
      return false;
    }
    out.push_back(std::move(ranks));
  }
  return true;
}

}  // namespace

bool parse_placement(const std::string& json_text, Placement& out, std::string& error) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    error = "placement: not a JSON object";
    return false;
  }
  Placement p;
  uint32_t max_rank = 0;
  if (j.contains("expert_to_ranks")) {
    if (!parse_table(j["expert_to_ranks"], p.expert_to_ranks, max_rank, error, "expert_to_ranks"))
      return false;
  } else if (j.contains("expert_to_rank")) {
    if (!parse_table(j["expert_to_rank"], p.expert_to_ranks, max_rank, error, "expert_to_rank"))
      return false;
  } else {
    error = "placement: needs \"expert_to_ranks\" (or \"expert_to_rank\")";
    return false;
  }
  if (j.contains("layers")) {
    if (!j["layers"].is_object()) {
      error = "placement: \"layers\" must be an object of layer index -> table";
      return false;
    }
    for (const auto& [key, value] : j["layers"].items()) {
      uint32_t layer = 0;
      try {
        size_t used = 0;
        unsigned long v = std::stoul(key, &used);
        if (used != key.size() || v >= wire::kMaxLayers) throw std::out_of_range(key);
        layer = static_cast<uint32_t>(v);
      } catch (const std::exception&) {
        error = "placement: layer key \"" + key + "\" is not a layer index";
        return false;
      }
      if (!parse_table(value, p.layers[layer], max_rank, error, "layers." + key)) return false;
    }
  }
  p.ranks = max_rank;
  if (j.contains("ranks")) {
    if (!j["ranks"].is_number_unsigned() || j["ranks"].get<uint64_t>() < max_rank ||
        j["ranks"].get<uint64_t>() > wire::kMaxRanks) {
      error = "placement: \"ranks\" must be an integer >= every rank named";
      return false;
    }
    p.ranks = j["ranks"].get<uint32_t>();
  }
  out = std::move(p);
  return true;
}

bool load_placement_file(const std::string& path, Placement& out, std::string& error) {
  std::ifstream in(path);
  if (!in) {
    error = "placement: cannot open " + path;
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (!parse_placement(ss.str(), out, error)) {
    error = path + ": " + error;
    return false;
  }
  return true;
}

}  // namespace inferscope::collector
