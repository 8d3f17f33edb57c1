#include "inferscope/cli/exit_status.hpp"

#include <iostream>

namespace inferscope::cli {

std::optional<int> parse(CLI::App& app, std::string_view program, int argc,
                         const char* const* argv) {
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e) == 0 ? kSuccess : kUsage;  // prints the help on stdout
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e) == 0 ? kSuccess : kUsage;
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e) == 0 ? kSuccess : kUsage;
  } catch (const CLI::ParseError& e) {
    // CLI11's messages name the flag ("The following arguments were not
    // expected: --no-such-flag", "--max-connections: Value x not in range ...").
    return usage_error(program, e.what());
  }
}

int usage_error(std::string_view program, std::string_view message) {
  std::cerr << program << ": " << message << "\n"
            << program << ": run with --help for the options\n";
  return kUsage;
}

}  // namespace inferscope::cli
