// Opens a listening TCP acceptor on an endpoint (port 0: a free port), shared
// by the ingest listeners and the viewer API so both resolve, bind and report
// errors the same way.
#pragma once

#include <asio.hpp>
#include <memory>
#include <string>

#include "inferscope/collector/endpoint.hpp"

namespace inferscope::collector::detail {

// Null with `error` set on failure ("cannot listen: Address already in use"; the
// caller names the flag and the address); otherwise listening, with `bound` the
// actual address.
inline std::shared_ptr<asio::ip::tcp::acceptor> open_tcp_acceptor(asio::io_context& io,
                                                                  const Endpoint& endpoint,
                                                                  Endpoint& bound,
                                                                  std::string& error) {
  std::error_code ec;
  asio::ip::tcp::resolver resolver(io);
  auto results = resolver.resolve(
      endpoint.host, std::to_string(endpoint.port),
      asio::ip::resolver_base::passive | asio::ip::resolver_base::numeric_service, ec);
  if (ec || results.empty()) {
    error = "cannot resolve the host: " + ec.message();
    return nullptr;
  }
  auto acc = std::make_shared<asio::ip::tcp::acceptor>(io);
  auto ep = results.begin()->endpoint();
  acc->open(ep.protocol(), ec);
  if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acc->bind(ep, ec);
  if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    error = "cannot listen: " + ec.message();
    return nullptr;
  }
  bound = endpoint;
  bound.host = acc->local_endpoint().address().to_string();
  bound.port = acc->local_endpoint().port();
  return acc;
}

}  // namespace inferscope::collector::detail
