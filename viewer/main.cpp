// inferscope-viewer: open a trace (file, segment directory, Chrome JSON) or
// connect live to a collector; see docs/viewer.md. Exit status: docs/cli.md.
#include "app.hpp"
#include "inferscope/cli/exit_status.hpp"

int main(int argc, char** argv) {
  inferscope::viewer::AppOptions o;
  CLI::App app{"inferscope viewer: timeline, expert load, memory, stages"};
  app.add_option("trace", o.trace, "trace file, directory of trace segments, or Chrome trace JSON");
  app.add_option("--connect", o.connect, "collector viewer API host:port (live)");
  app.add_option("--capture-endpoint", o.capture_endpoint,
                 "collector GPU capture endpoint host:port (its --capture-http): adds a capture "
                 "button to each alert");
  app.add_option("--auth-token-file", o.auth_token_file, "file holding the collector's auth token");
  app.add_option("--screenshot", o.screenshot, "render, write this PNG and exit");
  app.add_option("--frames", o.frames, "frames to render before the screenshot")
      ->check(CLI::Range(1, 1000));
  app.add_option("--view", o.view, "timeline|experts|alerts|memory|stages|details|ep|all");
  app.add_option("--window", o.window,
                 "analysis window relative to the trace start, e.g. 10s..20s");
  app.add_option("--width", o.width, "window width")->check(CLI::Range(200, 8192));
  app.add_option("--height", o.height, "window height")->check(CLI::Range(150, 8192));
  app.add_option("--theme", o.theme, "dark|light")->check(CLI::IsMember({"dark", "light"}));
  app.add_option("--scale", o.scale, "UI scale (default: the monitor's content scale)")
      ->check(CLI::Range(0.5, 4.0));
  if (auto status = inferscope::cli::parse(app, "inferscope-viewer", argc, argv)) return *status;
  return inferscope::viewer::run_app(o);
}
