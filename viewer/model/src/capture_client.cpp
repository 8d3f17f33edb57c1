#include "inferscope/viewer/capture_client.hpp"

#include <array>
#include <asio.hpp>
#include <cctype>
#include <cstdio>
#include <functional>

namespace inferscope::viewer {

namespace {
constexpr size_t kMaxResponseBytes = 64 * 1024;  // the collector's answers are a few hundred bytes

std::string percent_encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}
}  // namespace

CaptureClient::CaptureClient(std::string host, uint16_t port, std::chrono::milliseconds deadline)
    : host_(std::move(host)), port_(port), deadline_(deadline) {}

CaptureClient::~CaptureClient() {
  if (thread_.joinable()) thread_.join();
}

std::string CaptureClient::request_head(const std::string& host, const std::string& model,
                                        uint32_t steps) {
  return "POST /capture?model=" + percent_encode(model) + "&steps=" + std::to_string(steps) +
         " HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
}

bool CaptureClient::request(const std::string& model, uint32_t steps) {
  std::lock_guard<std::mutex> lock(mu_);
  if (reply_.state == CaptureReply::State::kPending) return false;
  if (thread_.joinable()) thread_.join();  // finished: its state is already in reply_
  reply_ = CaptureReply{};
  reply_.state = CaptureReply::State::kPending;
  reply_.model = model;
  thread_ = std::thread([this, model, steps] { run(model, steps); });
  return true;
}

CaptureReply CaptureClient::reply() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reply_;
}

void CaptureClient::run(std::string model, uint32_t steps) {
  using asio::ip::tcp;
  asio::io_context io;
  tcp::socket socket(io);
  tcp::resolver resolver(io);
  std::string response;
  std::string error;
  std::array<char, 4096> chunk{};
  const std::string head = request_head(host_, model, steps);

  // One chain of async steps under one deadline: run_for() returning with work left means the
  // collector did not answer in time.
  std::function<void()> read_more = [&] {
    socket.async_read_some(asio::buffer(chunk), [&](const asio::error_code& ec, size_t n) {
      response.append(chunk.data(), n);
      if (ec == asio::error::eof) return;  // the collector closes after its answer
      if (ec) {
        error = "read: " + ec.message();
        return;
      }
      if (response.size() > kMaxResponseBytes) {
        error = "answer larger than " + std::to_string(kMaxResponseBytes) + " bytes";
        return;
      }
      read_more();
    });
  };
  resolver.async_resolve(
      host_, std::to_string(port_),
      [&](const asio::error_code& ec, tcp::resolver::results_type results) {
        if (ec) {
          error = "resolve " + host_ + ": " + ec.message();
          return;
        }
        asio::async_connect(
            socket, results, [&](const asio::error_code& ec2, const tcp::endpoint&) {
              if (ec2) {
                error = "connect " + host_ + ":" + std::to_string(port_) + ": " + ec2.message();
                return;
              }
              asio::async_write(socket, asio::buffer(head),
                                [&](const asio::error_code& ec3, size_t) {
                                  if (ec3) {
                                    error = "send: " + ec3.message();
                                    return;
                                  }
                                  read_more();
                                });
            });
      });
  io.run_for(deadline_);
  if (!io.stopped() && error.empty())
    error = "no answer within " + std::to_string(deadline_.count()) + " ms";

  CaptureReply done;
  done.model = std::move(model);
  int status = 0;
  if (error.empty() && std::sscanf(response.c_str(), "HTTP/1.%*d %d", &status) != 1)
    error = "not an HTTP answer";
  if (error.empty()) {
    done.state = CaptureReply::State::kDone;
    done.http_status = status;
    const auto body = response.find("\r\n\r\n");
    done.body = body == std::string::npos ? "" : response.substr(body + 4);
  } else {
    done.state = CaptureReply::State::kFailed;
    done.error = std::move(error);
  }
  std::lock_guard<std::mutex> lock(mu_);
  reply_ = std::move(done);
}

}  // namespace inferscope::viewer
