// Parses a placement file into the engine's expert relabelling (placement_file.hpp).
#include "inferscope/engine/placement_file.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace inferscope::engine {
namespace {

using nlohmann::json;

// One map (logical expert -> rank), from either spelling.
std::vector<int64_t> read_map(const json& j, const std::string& where, bool replicas_form,
                              int32_t experts) {
  if (!j.is_array()) throw std::invalid_argument(where + " must be an array");
  if (j.size() != static_cast<size_t>(experts))
    throw std::invalid_argument(where + " has " + std::to_string(j.size()) +
                                " experts, the model has " + std::to_string(experts));
  std::vector<int64_t> m;
  for (size_t e = 0; e < j.size(); ++e) {
    const json* v = &j[e];
    if (replicas_form) {
      if (!v->is_array() || v->empty())
        throw std::invalid_argument(where + "[" + std::to_string(e) +
                                    "] must be a non-empty array of ranks");
      if (v->size() > 1)
        throw std::invalid_argument(
            where + "[" + std::to_string(e) + "]: expert " + std::to_string(e) + " has " +
            std::to_string(v->size()) +
            " replicas; redundant experts are not supported by the engine (one rank each)");
      v = &(*v)[0];
    }
    if (!v->is_number_integer() || v->get<int64_t>() < 0)
      throw std::invalid_argument(where + "[" + std::to_string(e) +
                                  "] is not a rank (a non-negative integer)");
    m.push_back(v->get<int64_t>());
  }
  return m;
}

std::vector<int64_t> read_any_map(const json& j, const std::string& where, int32_t experts) {
  // A layer override is either form; tell them apart by the first entry.
  const bool replicas = j.is_array() && !j.empty() && j[0].is_array();
  return read_map(j, where, replicas, experts);
}

// Checks the map against N and turns it into slot -> logical (rank-major, ascending ids).
std::vector<int32_t> slots_of(const std::vector<int64_t>& m, int64_t ranks,
                              const std::string& where) {
  const int64_t experts = static_cast<int64_t>(m.size()), per = experts / ranks;
  std::vector<int64_t> held(static_cast<size_t>(ranks), 0);
  for (size_t e = 0; e < m.size(); ++e) {
    if (m[e] >= ranks)
      throw std::invalid_argument(where + ": expert " + std::to_string(e) + " is on rank " +
                                  std::to_string(m[e]) + ", but there are " +
                                  std::to_string(ranks) + " ranks");
    ++held[static_cast<size_t>(m[e])];
  }
  for (int64_t r = 0; r < ranks; ++r)
    if (held[static_cast<size_t>(r)] != per)
      throw std::invalid_argument(where + ": rank " + std::to_string(r) + " holds " +
                                  std::to_string(held[static_cast<size_t>(r)]) +
                                  " experts; the engine needs exactly " + std::to_string(per) +
                                  " (E/N) on every rank");
  std::vector<int32_t> slots;
  for (int64_t r = 0; r < ranks; ++r)
    for (size_t e = 0; e < m.size(); ++e)
      if (m[e] == r) slots.push_back(static_cast<int32_t>(e));
  return slots;
}

bool identity(const std::vector<int32_t>& s) {
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] != static_cast<int32_t>(i)) return false;
  return true;
}

}  // namespace

ExpertPlacement parse_expert_placement(const std::string& text, const ModelConfig& config,
                                       int32_t ranks, int32_t rank, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw std::invalid_argument(origin + ": not JSON: " + e.what());
  }
  if (!j.is_object()) throw std::invalid_argument(origin + ": must be a JSON object");
  const int32_t E = config.moe.experts;
  const bool single = j.contains("expert_to_rank"), multi = j.contains("expert_to_ranks");
  if (single == multi)
    throw std::invalid_argument(origin +
                                ": give exactly one of \"expert_to_rank\" and \"expert_to_ranks\"");
  const std::string key = single ? "expert_to_rank" : "expert_to_ranks";
  const std::vector<int64_t> base = read_map(j[key], origin + ": " + key, multi, E);

  std::map<int32_t, std::vector<int64_t>> overrides;
  if (j.contains("layers")) {
    if (!j["layers"].is_object())
      throw std::invalid_argument(origin + ": \"layers\" must be an object");
    for (const auto& [name, value] : j["layers"].items()) {
      int32_t layer = -1;
      std::istringstream is(name);
      if (!(is >> layer) || !is.eof() || layer < 0 || layer >= config.n_layers() ||
          !config.is_moe(layer))
        throw std::invalid_argument(origin + ": layers[\"" + name +
                                    "\"] is not a MoE layer of model " + config.name);
      overrides[layer] = read_any_map(value, origin + ": layers[\"" + name + "\"]", E);
    }
  }

  int64_t n = 0;
  if (j.contains("ranks")) {
    if (!j["ranks"].is_number_integer() || j["ranks"].get<int64_t>() < 1)
      throw std::invalid_argument(origin + ": \"ranks\" must be a positive integer");
    n = j["ranks"].get<int64_t>();
  } else {
    for (int64_t r : base) n = std::max(n, r + 1);
    for (const auto& [l, m] : overrides)
      for (int64_t r : m) n = std::max(n, r + 1);
  }
  if (E % n != 0)
    throw std::invalid_argument(origin + ": " + std::to_string(n) + " ranks do not divide the " +
                                std::to_string(E) + " routed experts");
  if (ranks > 1 && n != ranks)
    throw std::invalid_argument(origin + ": the placement is for " + std::to_string(n) +
                                " ranks, --ep-size is " + std::to_string(ranks));

  // Check every layer's map (also with one rank, so a bad file never passes silently).
  std::vector<std::vector<int32_t>> per_layer(static_cast<size_t>(config.n_layers()));
  const std::vector<int32_t> base_slots = slots_of(base, n, origin + ": " + key);
  for (int32_t l = 0; l < config.n_layers(); ++l) {
    if (!config.is_moe(l)) continue;
    auto it = overrides.find(l);
    std::vector<int32_t> s =
        it == overrides.end()
            ? base_slots
            : slots_of(it->second, n, origin + ": layers[\"" + std::to_string(l) + "\"]");
    if (!identity(s)) per_layer[static_cast<size_t>(l)] = std::move(s);
  }

  ExpertPlacement p = ExpertPlacement::make(E, ranks, rank);
  if (ranks == 1) return p;  // one rank holds every expert: nothing to relabel
  p.slot_to_logical = std::move(per_layer);
  p.default_expert_to_rank.assign(base.begin(), base.end());
  return p.validated(E);
}

ExpertPlacement load_expert_placement(const std::string& path, const ModelConfig& config,
                                      int32_t ranks, int32_t rank) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("--ep-placement: cannot open '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_expert_placement(ss.str(), config, ranks, rank, path);
}

}  // namespace inferscope::engine
