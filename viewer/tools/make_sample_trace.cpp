// inferscope-make-sample-trace: writes a realistic synthetic trace (several
// ranks, nested ranges, kernels with correlation ids, a hot expert, memory,
// prefix cache, stages, requests, alert episodes) for demos, tests and benchmarks.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "inferscope/viewer/sample_trace.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Write a synthetic inferscope trace file"};
  std::string out;
  inferscope::viewer::SampleOptions o;
  app.add_option("output", out, "trace file to write")->required();
  app.add_option("--spans", o.target_spans, "approximate number of spans");
  app.add_option("--ranks", o.ranks, "ranks (sources)");
  app.add_option("--seconds", o.seconds, "trace length in seconds");
  app.add_option("--experts", o.experts, "routed experts per MoE layer");
  app.add_option("--layers", o.layers, "layers");
  app.add_option("--seed", o.seed, "random seed");
  app.add_flag("--expert-parallel", o.expert_parallel,
               "ranks are expert-parallel: contiguous expert shards, expert_parallel records, a "
               "skew to the hot expert's rank");
  CLI11_PARSE(app, argc, argv);
  inferscope::viewer::SampleSummary s;
  std::string error;
  if (!inferscope::viewer::write_sample_trace(out, o, &s, &error)) {
    std::fprintf(stderr, "inferscope-make-sample-trace: %s\n", error.c_str());
    return 1;
  }
  std::printf(
      "wrote %s: %llu spans (%llu kernels), %llu expert loads, %llu requests, %llu frames, %llu "
      "bytes\n",
      out.c_str(), (unsigned long long)s.spans, (unsigned long long)s.kernels,
      (unsigned long long)s.expert_loads, (unsigned long long)s.requests,
      (unsigned long long)s.frames, (unsigned long long)s.bytes);
  return 0;
}
