// Helpers for the viewer tests: temp dirs and hand-made records.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "inferscope/wire/records.hpp"

namespace inferscope::viewer::test {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/inferscope-viewer-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline wire::Span cpu_span(uint32_t name, int64_t a, int64_t b, uint32_t tid = 1) {
  wire::Span s;
  s.track_kind = wire::TrackKind::kCpuThread;
  s.track_id = tid;
  s.name_id = name;
  s.start_ns = a;
  s.end_ns = b;
  return s;
}

inline wire::Hello hello(uint32_t rank, std::vector<uint32_t> placement = {}) {
  wire::Hello h;
  h.service = "test";
  h.instance = "test:" + std::to_string(rank);
  h.host = "host";
  h.pid = 100 + rank;
  h.rank = rank;
  h.model.name = "m";
  h.model.layers = {{wire::LayerKind::kAttention, wire::FfnKind::kDense, 0},
                    {wire::LayerKind::kSsm, wire::FfnKind::kMoe, 4}};
  h.model.expert_to_rank = std::move(placement);
  return h;
}

}  // namespace inferscope::viewer::test
