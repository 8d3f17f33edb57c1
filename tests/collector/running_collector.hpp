// A Collector on its own thread with every port picked by the kernel, for the
// tests that talk to it over real sockets.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "inferscope/collector/collector.hpp"
#include "test_client.hpp"

namespace inferscope::collector::testing {

struct RunningCollector {
  std::unique_ptr<Collector> collector;
  std::thread thread;
  uint16_t ingest = 0, metrics = 0, viewer = 0, capture = 0;

  // `tune` runs after the defaults below (loopback ports, no tick), so a test may change any.
  explicit RunningCollector(CollectorOptions o,
                            const std::function<void(CollectorOptions&)>& tune = {}) {
    o.listen = {"tcp://127.0.0.1:0"};
    o.metrics = "127.0.0.1:0";
    o.viewer = "127.0.0.1:0";
    o.tick = std::chrono::milliseconds(0);  // windows by record timestamps only
    if (tune) tune(o);
    collector = std::make_unique<Collector>(std::move(o));
    std::string error;
    if (!collector->start(error)) throw std::runtime_error(error);
    auto port_of = [](const std::string& line) {
      return static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
    };
    for (const auto& line : collector->listening_lines()) {
      if (line.rfind("listening ingest tcp://", 0) == 0) ingest = port_of(line);
      if (line.rfind("listening metrics ", 0) == 0) metrics = port_of(line);
      if (line.rfind("listening viewer ", 0) == 0) viewer = port_of(line);
      if (line.rfind("listening capture ", 0) == 0) capture = port_of(line);
    }
    thread = std::thread([this] { collector->run(); });
  }
  // After stop() the pipeline may be inspected from the test thread.
  void stop() {
    if (!thread.joinable()) return;
    collector->stop();
    thread.join();
  }
  ~RunningCollector() { stop(); }
  std::map<std::string, double> scrape() { return parse_exposition(http_get(metrics)); }
};

}  // namespace inferscope::collector::testing
