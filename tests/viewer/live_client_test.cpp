// LiveClient against a real TCP server on loopback: the hello it sends, the
// records it hands over, and reconnecting after the server drops it.
#include "inferscope/viewer/live_client.hpp"

#include <gtest/gtest.h>

#include <asio.hpp>
#include <chrono>
#include <thread>

#include "inferscope/viewer/trace_model.hpp"
#include "inferscope/wire/codec.hpp"
#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

using asio::ip::tcp;

// Reads one whole frame from the socket and decodes it.
std::vector<wire::Record> read_frame(tcp::socket& s) {
  std::vector<uint8_t> buf(wire::kFrameHeaderBytes);
  asio::read(s, asio::buffer(buf));
  uint32_t payload =
      buf[8] | (buf[9] << 8) | (buf[10] << 16) | (static_cast<uint32_t>(buf[11]) << 24);
  buf.resize(wire::kFrameHeaderBytes + payload);
  asio::read(s, asio::buffer(buf.data() + wire::kFrameHeaderBytes, payload));
  std::vector<wire::Record> out;
  EXPECT_TRUE(wire::decode_frame(buf, out).ok());
  return out;
}

void send_frame(tcp::socket& s, uint32_t source, const std::vector<wire::Record>& records) {
  wire::EncoderOptions o;
  o.source_id = source;
  wire::FrameEncoder enc(o);
  for (const auto& r : records) enc.add(r);
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  asio::write(s, asio::buffer(bytes));
}

size_t drain_until(LiveClient& c, TraceModel& m, size_t want, int timeout_ms = 30000) {
  std::vector<std::pair<uint32_t, wire::Record>> got;
  size_t total = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (total < want && std::chrono::steady_clock::now() < deadline) {
    got.clear();
    c.drain(got, 1000);
    for (auto& [src, r] : got) m.add(src, r);
    total += got.size();
    if (got.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  m.finalize();
  return total;
}

TEST(ViewerLiveClient, ParsesHostPort) {
  std::string host, err;
  uint16_t port = 0;
  EXPECT_TRUE(parse_host_port("127.0.0.1:7433", host, port, err));
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 7433);
  EXPECT_TRUE(parse_host_port("tcp://localhost:1", host, port, err));
  EXPECT_EQ(host, "localhost");
  EXPECT_TRUE(parse_host_port("[::1]:99", host, port, err));
  EXPECT_EQ(host, "::1");
  EXPECT_FALSE(parse_host_port("localhost", host, port, err));
  EXPECT_FALSE(parse_host_port("h:0", host, port, err));
  EXPECT_FALSE(parse_host_port("h:70000", host, port, err));
  EXPECT_FALSE(parse_host_port("h:12x", host, port, err));
  EXPECT_FALSE(err.empty());
}

TEST(ViewerLiveClient, StreamsRecordsAndReconnects) {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  LiveOptions o;
  o.port = acceptor.local_endpoint().port();
  o.auth_token = "s3cret";
  o.reconnect_ms = 50;
  LiveClient client(o);
  client.start();

  TraceModel m;
  {
    tcp::socket s = acceptor.accept();
    auto hello = read_frame(s);
    ASSERT_EQ(hello.size(), 1u);
    const auto* h = std::get_if<wire::Hello>(&hello[0]);
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(h->service, "inferscope-viewer");
    EXPECT_EQ(h->auth_token, "s3cret");
    send_frame(s, 1, {test::hello(0), wire::StringDef{1, "decode"}});
    std::vector<wire::Record> spans;
    for (int i = 0; i < 50; ++i) spans.push_back(test::cpu_span(1, i * 100, i * 100 + 50));
    send_frame(s, 1, spans);
    ASSERT_EQ(drain_until(client, m, 52), 52u);
    EXPECT_TRUE(client.connected());
    EXPECT_EQ(m.span_count(), 50u);
    EXPECT_EQ(m.name(m.tracks()[0].lanes[0].spans[0].name), "decode");
    // A corrupt frame: the client gives up on this connection and reconnects.
    std::vector<uint8_t> junk(64, 0xEE);
    asio::write(s, asio::buffer(junk));
  }
  {
    tcp::socket s = acceptor.accept();  // the reconnect
    auto hello = read_frame(s);
    ASSERT_EQ(hello.size(), 1u);
    // The collector replays hello + strings, then new records.
    send_frame(s, 1,
               {test::hello(0), wire::StringDef{1, "decode"}, test::cpu_span(1, 10000, 10100)});
    ASSERT_EQ(drain_until(client, m, 3), 3u);
    EXPECT_EQ(m.span_count(), 51u);
    EXPECT_GE(client.reconnects(), 1u);
    EXPECT_NE(client.last_error().find("bad stream"), std::string::npos) << client.last_error();
  }
  client.stop();
  EXPECT_FALSE(client.connected());
}

TEST(ViewerLiveClient, BoundedQueueDropsAndCounts) {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  LiveOptions o;
  o.port = acceptor.local_endpoint().port();
  o.max_queued_records = 10;
  LiveClient client(o);
  client.start();
  tcp::socket s = acceptor.accept();
  read_frame(s);
  std::vector<wire::Record> spans;
  spans.push_back(wire::StringDef{1, "x"});
  for (int i = 0; i < 40; ++i) spans.push_back(test::cpu_span(1, i, i + 1));
  send_frame(s, 1, spans);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (client.dropped() + client.records() < 41 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(client.records(), 10u);
  EXPECT_EQ(client.dropped(), 31u);
  std::vector<std::pair<uint32_t, wire::Record>> got;
  EXPECT_EQ(client.drain(got, 100), 10u);
  client.stop();
}

TEST(ViewerLiveClient, StopsWhileNothingListens) {
  LiveOptions o;
  o.port = 1;  // nothing there: connect fails, it keeps retrying until stopped
  o.reconnect_ms = 20;
  LiveClient client(o);
  client.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(client.connected());
  client.stop();
  EXPECT_FALSE(client.last_error().empty());
}

}  // namespace
}  // namespace inferscope::viewer
