// inferscope viewer: asks a collector for a GPU capture of a model's next steps.
//
// It speaks to the collector's loopback capture endpoint (`--capture-http HOST:PORT`,
// docs/collector.md): `POST /capture?model=NAME&steps=N`, answered with a JSON body that says how
// many agents were asked and how many refused (busy, cooldown). One request at a time, on its
// own thread, so the UI thread never waits on the network; the UI polls reply() each frame.
// The whole exchange is bounded (a deadline, 5 s by default), so a collector that accepts and never
// answers ends in kFailed, not in a request pending for ever.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace inferscope::viewer {

struct CaptureReply {
  enum class State { kIdle, kPending, kDone, kFailed };
  State state = State::kIdle;
  int http_status = 0;  // kDone: the collector's status (200, 404 no agent of that model, ...)
  std::string body;     // kDone: the collector's JSON answer
  std::string error;    // kFailed: why nothing was answered
  std::string model;    // what was asked for
};

class CaptureClient {
 public:
  static constexpr std::chrono::milliseconds kDeadline{5000};

  CaptureClient(std::string host, uint16_t port, std::chrono::milliseconds deadline = kDeadline);
  ~CaptureClient();  // waits for a request in flight (at most the deadline)
  CaptureClient(const CaptureClient&) = delete;
  CaptureClient& operator=(const CaptureClient&) = delete;

  // Starts a request; false (nothing sent) while another one is pending.
  bool request(const std::string& model, uint32_t steps);
  CaptureReply reply() const;

  // The request head for a model and step count (public for tests): the model name is
  // percent-encoded, so any byte of a model name reaches the collector unchanged.
  static std::string request_head(const std::string& host, const std::string& model,
                                  uint32_t steps);

 private:
  void run(std::string model, uint32_t steps);

  const std::string host_;
  const uint16_t port_;
  const std::chrono::milliseconds deadline_;
  mutable std::mutex mu_;
  CaptureReply reply_;
  std::thread thread_;
};

}  // namespace inferscope::viewer
