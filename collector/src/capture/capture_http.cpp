// The loopback capture endpoint (capture_http.hpp).
#include "capture_http.hpp"

#include <charconv>

#include "../ingest/tcp_acceptor.hpp"

namespace inferscope::collector::detail {

namespace {
constexpr size_t kMaxConnections = 8;
constexpr size_t kMaxHeadBytes = 8192;
constexpr auto kConnectionTimeout = std::chrono::seconds(5);

bool is_loopback(const asio::ip::address& a) {
  if (a.is_v4()) return a.to_v4().is_loopback();
  if (a.is_v6()) {
    const auto v6 = a.to_v6();
    return v6.is_loopback() ||
           (v6.is_v4_mapped() && asio::ip::make_address_v4(asio::ip::v4_mapped, v6).is_loopback());
  }
  return false;
}

std::string reply(int status, const char* reason, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason +
         "\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string error_body(const std::string& message) {
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) escaped += c;
  }
  return "{\"error\":\"" + escaped + "\"}\n";
}

// %XX and '+' in a query value.
std::string url_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size()) {
      unsigned v = 0;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec == std::errc{} && p == s.data() + i + 3) {
        out += static_cast<char>(v);
        i += 2;
      } else {
        out += s[i];
      }
    } else {
      out += s[i];
    }
  }
  return out;
}

bool parse_u32(const std::string& s, uint32_t& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}
}  // namespace

struct CaptureHttp::Conn : std::enable_shared_from_this<Conn> {
  Conn(CaptureHttp& server, asio::ip::tcp::socket s)
      : server(server), open(server.open_), socket(std::move(s)), timer(server.io_) {}
  // The count outlives the server: handlers may be destroyed after it, with the io_context.
  ~Conn() { --*open; }
  CaptureHttp& server;
  std::shared_ptr<size_t> open;
  asio::ip::tcp::socket socket;
  asio::steady_timer timer;
  std::string in, out;

  void start() {
    auto self = shared_from_this();
    timer.expires_after(kConnectionTimeout);
    timer.async_wait([self](std::error_code ec) {
      if (!ec) {
        std::error_code ignored;
        self->socket.close(ignored);
      }
    });
    asio::async_read_until(
        socket, asio::dynamic_buffer(in, kMaxHeadBytes), "\r\n\r\n",
        [self](std::error_code ec, size_t n) {
          if (ec == asio::error::not_found)
            self->send(reply(413, "Payload Too Large", error_body("request head over 8 KiB")));
          else if (!ec)
            self->send(self->server.respond(self->in.substr(0, n)));
          else
            self->timer.cancel();
        });
  }
  void send(std::string response) {
    out = std::move(response);
    auto self = shared_from_this();
    asio::async_write(socket, asio::buffer(out), [self](std::error_code, size_t) {
      std::error_code ignored;
      self->socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
      self->socket.close(ignored);
      self->timer.cancel();
    });
  }
};

CaptureHttp::CaptureHttp(asio::io_context& io, CaptureCoordinator& coordinator, Now now)
    : io_(io), coordinator_(coordinator), now_(std::move(now)) {}

CaptureHttp::~CaptureHttp() {
  stop();
}

bool CaptureHttp::listen(const Endpoint& endpoint, Endpoint& bound, std::string& error) {
  std::error_code ec;
  const auto addr =
      asio::ip::make_address(endpoint.host == "localhost" ? "127.0.0.1" : endpoint.host, ec);
  if (ec || !is_loopback(addr)) {
    error = "the capture endpoint binds loopback addresses only (127.0.0.1, ::1), not '" +
            endpoint.host + "'";
    return false;
  }
  acceptor_ = open_tcp_acceptor(io_, endpoint, bound, error);
  if (!acceptor_) return false;
  accept();
  return true;
}

void CaptureHttp::stop() {
  if (!acceptor_) return;
  std::error_code ignored;
  acceptor_->close(ignored);
}

void CaptureHttp::accept() {
  auto acc = acceptor_;
  acc->async_accept([this, acc](std::error_code ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acc->is_open()) return;
    if (!ec) {
      std::error_code pe;
      const auto peer = socket.remote_endpoint(pe);
      if (pe || !is_loopback(peer.address()) || *open_ >= kMaxConnections) {
        std::error_code ignored;
        socket.close(ignored);
      } else {
        ++*open_;
        std::make_shared<Conn>(*this, std::move(socket))->start();
      }
    }
    accept();
  });
}

std::string CaptureHttp::respond(const std::string& head) {
  const size_t line_end = head.find("\r\n");
  const std::string line = head.substr(0, line_end);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.find(' ', sp1 == std::string::npos ? 0 : sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos)
    return reply(400, "Bad Request", error_body("malformed request line"));
  const std::string method = line.substr(0, sp1);
  const std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const size_t q = target.find('?');
  const std::string path = target.substr(0, q);
  if (path != "/capture")
    return reply(404, "Not Found", error_body("only POST /capture?model=NAME[&steps=N|&ms=T]"));
  if (method != "POST") return reply(405, "Method Not Allowed", error_body("use POST"));
  std::string model;
  uint32_t steps = 0, ms = 0;
  std::string_view query = q == std::string::npos ? "" : std::string_view(target).substr(q + 1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view kv = query.substr(0, amp);
    const size_t eq = kv.find('=');
    const std::string key(kv.substr(0, eq));
    const std::string value = url_decode(eq == std::string_view::npos ? "" : kv.substr(eq + 1));
    if (key == "model") {
      model = value;
    } else if (key == "steps") {
      if (!parse_u32(value, steps) || steps == 0 || steps > 100'000)
        return reply(400, "Bad Request", error_body("steps must be an integer in [1, 100000]"));
    } else if (key == "ms") {
      if (!parse_u32(value, ms) || ms == 0 || ms > 600'000)
        return reply(400, "Bad Request", error_body("ms must be an integer in [1, 600000]"));
    } else {
      return reply(400, "Bad Request", error_body("unknown parameter '" + key + "'"));
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  if (model.empty()) return reply(400, "Bad Request", error_body("model=NAME is required"));
  if (steps && ms) return reply(400, "Bad Request", error_body("give steps or ms, not both"));
  const auto o = coordinator_.request(model, steps, ms, 0, "user", now_());
  if (o.agents == 0)
    return reply(404, "Not Found", error_body("no connected agent of model '" + model + "'"));
  const std::string body = "{\"capture_id\":" + std::to_string(o.capture_id) +
                           ",\"agents\":" + std::to_string(o.agents) +
                           ",\"sent\":" + std::to_string(o.sent) +
                           ",\"refused_busy\":" + std::to_string(o.refused_busy) +
                           ",\"refused_cooldown\":" + std::to_string(o.refused_cooldown) +
                           ",\"unsupported\":" + std::to_string(o.unsupported) + "}\n";
  return reply(200, "OK", body);
}

}  // namespace inferscope::collector::detail
