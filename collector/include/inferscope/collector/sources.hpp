// inferscope collector: what the collector remembers about each agent stream.
//
// A source is one agent connection. It is numbered from 1 (0 is the collector
// itself). The collector keeps its hello (with the auth token removed) and its
// interned strings, because every viewer that connects and every new trace
// segment starts by replaying them: without them the ids in later records mean
// nothing. Closed sources are kept (up to a bound) so a viewer that connects
// later can still read what they sent.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

struct Source {
  uint32_t id = 0;
  wire::Hello hello;  // auth_token cleared
  std::string model;  // label value: hello.model.name, or "unknown"
  std::string rank;   // label value
  bool connected = true;
  std::unordered_map<uint32_t, std::string> strings;
  size_t string_bytes = 0;
  // Bumped whenever a string is defined or redefined: what a consumer derived
  // from the strings (e.g. the MoE layer of a range name) holds until it moves.
  uint64_t strings_version = 0;

  // "" when the id is unknown.
  const std::string& string(uint32_t id) const;
};

class SourceRegistry {
 public:
  explicit SourceRegistry(size_t max_closed = 64) : max_closed_(max_closed) {}

  // A new source with the next id; the hello's auth token is dropped here.
  Source& add(const wire::Hello& hello);
  Source* find(uint32_t id);
  void close(uint32_t id);  // keeps it for replay; evicts the oldest closed beyond the bound

  // Encodes every source's hello and string definitions as frames (source_id set)
  // appended to out: what a viewer or a new trace segment starts with.
  void replay(std::vector<std::vector<uint8_t>>& frames) const;

  size_t size() const { return sources_.size(); }
  template <typename F>
  void for_each(F&& f) const {
    for (const auto& [id, s] : sources_) f(*s);
  }

 private:
  size_t max_closed_;
  uint32_t next_id_ = 1;
  std::map<uint32_t, std::unique_ptr<Source>> sources_;
  std::deque<uint32_t> closed_;
};

}  // namespace inferscope::collector
