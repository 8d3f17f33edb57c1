// CaptureClient against real loopback sockets: what it sends, how it reads the collector's answer,
// and that a refused connection or a silent server ends in kFailed instead of a request pending
// for ever. (The collector side of POST /capture is tested in tests/collector/capture_*.)
#include "inferscope/viewer/capture_client.hpp"

#include <gtest/gtest.h>

#include <asio.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace inferscope::viewer {
namespace {

using asio::ip::tcp;

// Polls until the request is no longer pending (liveness only: a generous limit, no timing claim).
CaptureReply wait_done(const CaptureClient& c) {
  for (int i = 0; i < 6000; ++i) {
    CaptureReply r = c.reply();
    if (r.state != CaptureReply::State::kPending) return r;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return c.reply();
}

// One connection: reads the request head, waits until released (if asked to hold), then answers
// `answer` (nothing when empty) and closes.
struct OneShotServer {
  asio::io_context io;
  tcp::acceptor acceptor{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
  std::string head;
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  bool released = true;
  uint16_t port() const { return acceptor.local_endpoint().port(); }
  void hold() { released = false; }
  void release() {
    std::lock_guard<std::mutex> lock(mu);
    released = true;
    cv.notify_all();
  }
  void serve(std::string answer) {
    thread = std::thread([this, answer] {
      tcp::socket s(io);
      acceptor.accept(s);
      asio::streambuf buf;
      asio::error_code ec;
      asio::read_until(s, buf, "\r\n\r\n", ec);
      head.assign(asio::buffers_begin(buf.data()), asio::buffers_end(buf.data()));
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [this] { return released; });
      if (!answer.empty()) asio::write(s, asio::buffer(answer), ec);
    });
  }
  ~OneShotServer() {
    release();
    if (thread.joinable()) thread.join();
  }
};

std::string ok_answer(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
         "Content-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(ViewerCaptureClient, PostsTheModelAndStepsAndReadsTheAnswer) {
  OneShotServer server;
  const std::string body = R"({"capture_id":3,"agents":2,"sent":2,"refused_busy":0})";
  server.serve(ok_answer(body));
  CaptureClient client("127.0.0.1", server.port());
  ASSERT_TRUE(client.request("mixtral 8x7b/v1", 8));
  const CaptureReply r = wait_done(client);
  ASSERT_EQ(r.state, CaptureReply::State::kDone) << r.error;
  EXPECT_EQ(r.http_status, 200);
  EXPECT_EQ(r.body, body);
  EXPECT_EQ(r.model, "mixtral 8x7b/v1");
  server.thread.join();
  EXPECT_EQ(server.head.rfind("POST /capture?model=mixtral%208x7b%2Fv1&steps=8 HTTP/1.1\r\n", 0),
            0u)
      << server.head;
}

TEST(ViewerCaptureClient, PassesOnTheCollectorsRefusal) {
  OneShotServer server;
  const std::string body = R"({"error":"no connected agent of model 'x'"})";
  server.serve("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body);
  CaptureClient client("127.0.0.1", server.port());
  ASSERT_TRUE(client.request("x", 4));
  const CaptureReply r = wait_done(client);
  ASSERT_EQ(r.state, CaptureReply::State::kDone) << r.error;
  EXPECT_EQ(r.http_status, 404);
  EXPECT_EQ(r.body, body);
}

TEST(ViewerCaptureClient, NoCollectorListeningIsAClearFailure) {
  uint16_t port = 0;
  {
    asio::io_context io;
    tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port = a.local_endpoint().port();
  }  // closed again: nothing listens there now
  CaptureClient client("127.0.0.1", port);
  ASSERT_TRUE(client.request("m", 1));
  const CaptureReply r = wait_done(client);
  ASSERT_EQ(r.state, CaptureReply::State::kFailed);
  EXPECT_NE(r.error.find("connect"), std::string::npos) << r.error;
}

TEST(ViewerCaptureClient, OneRequestAtATime) {
  OneShotServer server;
  server.hold();  // the answer waits until the second request has been refused
  server.serve(ok_answer("{}"));
  CaptureClient client("127.0.0.1", server.port(), std::chrono::minutes(5));
  ASSERT_TRUE(client.request("m", 1));
  EXPECT_FALSE(client.request("m", 1));
  EXPECT_EQ(client.reply().state, CaptureReply::State::kPending);
  server.release();
  const CaptureReply r = wait_done(client);
  ASSERT_EQ(r.state, CaptureReply::State::kDone) << r.error;
  EXPECT_EQ(r.http_status, 200);
}

TEST(ViewerCaptureClient, ASilentCollectorEndsInFailure) {
  OneShotServer server;
  server.hold();  // accepts and answers nothing until the client has given up
  server.serve("");
  CaptureClient client("127.0.0.1", server.port(), std::chrono::milliseconds(200));
  ASSERT_TRUE(client.request("m", 1));
  const CaptureReply r = wait_done(client);
  ASSERT_EQ(r.state, CaptureReply::State::kFailed);
  EXPECT_NE(r.error.find("no answer"), std::string::npos) << r.error;
}

}  // namespace
}  // namespace inferscope::viewer
