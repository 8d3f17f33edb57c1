// inferscope command lines: one exit-status convention for every binary (docs/cli.md).
//
//   CLI::App app{"..."};
//   app.add_option(...);
//   if (auto status = inferscope::cli::parse(app, "inferscope-collector", argc, argv)) return
//   *status;
//   ...
//   if (bad_value) return inferscope::cli::usage_error("inferscope-collector", "--window \"soon\"
//   is not a duration"); if (!bind(...)) { print the reason; return inferscope::cli::kFailure; }
//
// 0 success (and --help), 1 a runtime failure (a port in use, a file that cannot
// be read), 2 a usage error (an unknown flag, a missing or malformed value).
// CLI11's own exit codes (105 for a conversion error, 109 for an unknown flag,
// ...) never reach the shell: parse() maps them to 2.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string_view>

namespace inferscope::cli {

inline constexpr int kSuccess = 0;
inline constexpr int kFailure = 1;
inline constexpr int kUsage = 2;

// Parses argv. nullopt: go on. Otherwise the process should exit with the
// returned status: kSuccess after --help (printed on stdout), kUsage after a
// parse error (printed on stderr as "program: message", naming the flag).
std::optional<int> parse(CLI::App& app, std::string_view program, int argc,
                         const char* const* argv);

// Prints "program: message" and the --help hint on stderr; returns kUsage.
int usage_error(std::string_view program, std::string_view message);

}  // namespace inferscope::cli
