#include "inferscope/collector/sources.hpp"

#include <algorithm>

#include "inferscope/wire/codec.hpp"

namespace inferscope::collector {

const std::string& Source::string(uint32_t string_id) const {
  static const std::string empty;
  auto it = strings.find(string_id);
  return it == strings.end() ? empty : it->second;
}

Source& SourceRegistry::add(const wire::Hello& hello) {
  auto s = std::make_unique<Source>();
  s->id = next_id_++;
  s->hello = hello;
  s->hello.auth_token.clear();  // never stored, forwarded or written to disk
  // Label values from the network are bounded; an empty model name gets a placeholder.
  s->model = hello.model.name.empty() ? "unknown" : hello.model.name.substr(0, 128);
  s->rank = std::to_string(hello.rank);
  Source& ref = *s;
  sources_[ref.id] = std::move(s);
  return ref;
}

Source* SourceRegistry::find(uint32_t source_id) {
  auto it = sources_.find(source_id);
  return it == sources_.end() ? nullptr : it->second.get();
}

void SourceRegistry::close(uint32_t source_id) {
  Source* s = find(source_id);
  if (s == nullptr || !s->connected) return;
  s->connected = false;
  closed_.push_back(source_id);
  while (closed_.size() > max_closed_) {
    sources_.erase(closed_.front());
    closed_.pop_front();
  }
}

void SourceRegistry::replay(std::vector<std::vector<uint8_t>>& frames) const {
  for (const auto& [id, s] : sources_) {
    wire::EncoderOptions options;
    options.source_id = id;
    options.compress = true;
    wire::FrameEncoder enc(options);
    std::vector<uint8_t> frame;
    enc.add(wire::Record{s->hello});
    // Sorted so that replays are reproducible (tests compare them).
    std::vector<uint32_t> ids;
    ids.reserve(s->strings.size());
    for (const auto& [sid, value] : s->strings) ids.push_back(sid);
    std::sort(ids.begin(), ids.end());
    for (uint32_t sid : ids) {
      if (enc.full()) {
        enc.finish(frame);
        frames.push_back(std::move(frame));
        frame.clear();
      }
      enc.add(wire::StringDef{sid, s->strings.at(sid)});
    }
    enc.finish(frame);
    frames.push_back(std::move(frame));
  }
}

}  // namespace inferscope::collector
