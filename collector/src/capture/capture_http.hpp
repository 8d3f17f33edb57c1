// The capture endpoint: a minimal HTTP/1.1 server for one request,
//
//   POST /capture?model=NAME[&steps=N|&ms=T]
//
// answered with JSON {"capture_id":..,"agents":..,"sent":..,"refused_busy":..,
// "refused_cooldown":..,"unsupported":..} (200), or an error (400 bad query,
// 404 no agent of that model, 405 not POST, 413 request too large). It binds
// only loopback addresses (127.0.0.0/8, ::1) and answers only loopback peers:
// it triggers work in serving processes and has no authentication of its own.
// Bounded: 8 connections at once, 8 KiB of request head, 5 s per connection.
// Runs on the collector's io thread, like the coordinator it calls.
#pragma once

#include <asio.hpp>
#include <functional>
#include <memory>
#include <string>

#include "inferscope/collector/capture.hpp"
#include "inferscope/collector/endpoint.hpp"

namespace inferscope::collector::detail {

class CaptureHttp {
 public:
  using Now = std::function<int64_t()>;
  CaptureHttp(asio::io_context& io, CaptureCoordinator& coordinator, Now now);
  ~CaptureHttp();
  // False with error set when the address is not loopback or cannot be bound.
  bool listen(const Endpoint& endpoint, Endpoint& bound, std::string& error);
  void stop();

  // The response (status line, headers, body) to one request head; public for tests.
  std::string respond(const std::string& head);

 private:
  struct Conn;
  void accept();

  asio::io_context& io_;
  CaptureCoordinator& coordinator_;
  Now now_;
  std::shared_ptr<asio::ip::tcp::acceptor> acceptor_;
  std::shared_ptr<size_t> open_ = std::make_shared<size_t>(0);  // connections now
};

}  // namespace inferscope::collector::detail
