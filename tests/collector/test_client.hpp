// Helpers for the collector tests: a fake agent that speaks the real wire
// format (FrameEncoder over a real socket), a tiny HTTP GET for /metrics, and
// a parser for the Prometheus text exposition.
#pragma once

#include <unistd.h>

#include <asio.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "inferscope/wire/codec.hpp"

namespace inferscope::collector::testing {

// A directory under the system temp dir named after the test and this
// process (tests run in parallel processes), emptied first, removed after.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

inline wire::Hello make_hello(const std::string& model, uint32_t rank, uint32_t layers,
                              uint16_t experts, std::vector<uint32_t> expert_to_rank = {}) {
  wire::Hello h;
  h.service = "test-agent";
  h.instance = "test:" + std::to_string(rank);
  h.host = "localhost";
  h.pid = 1000 + rank;
  h.rank = rank;
  h.world_size = 8;
  h.model.name = model;
  h.model.top_k = 2;
  for (uint32_t l = 0; l < layers; ++l)
    h.model.layers.push_back({wire::LayerKind::kAttention, wire::FfnKind::kMoe, experts});
  h.model.expert_to_rank = std::move(expert_to_rank);
  return h;
}

inline wire::ExpertLoad make_load(uint32_t layer, int64_t ts, std::vector<uint32_t> routed,
                                  uint32_t dropped = 0) {
  wire::ExpertLoad l;
  l.layer = layer;
  l.timestamp_ns = ts;
  l.routed = std::move(routed);
  uint64_t sum = 0;
  for (auto v : l.routed) sum += v;
  l.tokens = static_cast<uint32_t>(sum / 2);
  l.dropped = dropped;
  return l;
}

// One frame of `records`, stamped with `source` (the id the collector's pipeline
// rewrites on ingest; trace-store tests write frames as the pipeline would);
// compress: zstd, as an agent may send it.
inline std::vector<uint8_t> frame_from(uint32_t source, const std::vector<wire::Record>& records,
                                       bool compress = false) {
  wire::EncoderOptions o;
  o.source_id = source;
  o.compress = compress;
  wire::FrameEncoder enc(o);
  for (const auto& r : records) enc.add(r);
  std::vector<uint8_t> out;
  enc.finish(out);
  return out;
}

inline std::vector<uint8_t> frame_of(const std::vector<wire::Record>& records) {
  return frame_from(0, records);
}

// A blocking client on its own io_context.
class FakeAgent {
 public:
  explicit FakeAgent(uint16_t port) : socket_(io_) {
    socket_.connect({asio::ip::make_address("127.0.0.1"), port});
  }
  explicit FakeAgent(const std::string& unix_path) : unix_(io_) {
    unix_.connect(asio::local::stream_protocol::endpoint(unix_path));
    use_unix_ = true;
  }
  void send(const std::vector<uint8_t>& bytes) {
    if (use_unix_)
      asio::write(unix_, asio::buffer(bytes));
    else
      asio::write(socket_, asio::buffer(bytes));
  }
  void send(const std::vector<wire::Record>& records) { send(frame_of(records)); }
  // True once the collector closed the connection (read returns EOF or an error).
  bool closed_by_peer(std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
    auto& s = socket_;
    if (use_unix_) return wait_closed(unix_, timeout);
    return wait_closed(s, timeout);
  }

 private:
  template <typename Sock>
  bool wait_closed(Sock& sock, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    sock.non_blocking(true);
    uint8_t b[64];
    while (std::chrono::steady_clock::now() < deadline) {
      std::error_code ec;
      sock.read_some(asio::buffer(b), ec);
      if (ec == asio::error::would_block) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      if (ec) return true;
    }
    return false;
  }
  asio::io_context io_;
  asio::ip::tcp::socket socket_{io_};
  asio::local::stream_protocol::socket unix_{io_};
  bool use_unix_ = false;
};

// Sends `request` to 127.0.0.1:port and reads until the server closes; the whole response, status
// line and headers included ("" when it cannot connect).
inline std::string http_exchange(uint16_t port, const std::string& request) {
  asio::io_context io;
  asio::ip::tcp::socket s(io);
  std::error_code ec;
  s.connect({asio::ip::make_address("127.0.0.1"), port}, ec);
  if (ec) return "";
  asio::write(s, asio::buffer(request), ec);
  std::string response;
  char buf[65536];
  for (;;) {
    size_t n = s.read_some(asio::buffer(buf), ec);
    response.append(buf, n);
    if (ec) break;
  }
  return response;
}

// GET http://127.0.0.1:port/path; the body ("" on failure).
inline std::string http_get(uint16_t port, const std::string& path = "/metrics") {
  const std::string response =
      http_exchange(port, "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// POST http://127.0.0.1:port/target (the capture endpoint); the whole response, status line and
// headers included ("" when it cannot connect).
inline std::string http_post(uint16_t port, const std::string& target) {
  return http_exchange(port, "POST " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
}

// Parses exposition text into "name{labels}" -> value, labels as printed.
inline std::map<std::string, double> parse_exposition(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

// Value of the first series whose name matches and whose labels contain every
// given `key="value"` fragment.
inline std::optional<double> find_series(const std::map<std::string, double>& series,
                                         const std::string& name,
                                         const std::vector<std::string>& label_parts = {}) {
  for (const auto& [key, value] : series) {
    if (key.compare(0, name.size(), name) != 0) continue;
    if (key.size() > name.size() && key[name.size()] != '{') continue;
    bool all = true;
    for (const auto& p : label_parts)
      if (key.find(p) == std::string::npos) all = false;
    if (all) return value;
  }
  return std::nullopt;
}

inline size_t count_named(const std::map<std::string, double>& series, const std::string& name) {
  size_t n = 0;
  for (const auto& [key, value] : series)
    if (key.compare(0, name.size() + 1, name + "{") == 0 || key == name) ++n;
  return n;
}

// Polls until pred() holds or the timeout passes.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::milliseconds(30000)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

}  // namespace inferscope::collector::testing
