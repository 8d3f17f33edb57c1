// Chrome JSON both ways with the real parts: the collector's exporter writes
// every alert kind (closed and still open), the viewer's importer reads them
// back with the same kind, layer and expert. Both go through wire/names.hpp;
// before, the importer knew the kinds only up to drop_burst and read hot_rank
// back as hot_expert.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>

#include "inferscope/collector/chrome_export.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/trace_model.hpp"
#include "inferscope/wire/codec.hpp"

using namespace inferscope::collector;
namespace wire = inferscope::wire;
namespace viewer = inferscope::viewer;
namespace fs = std::filesystem;

TEST(ChromeRoundTrip, EveryAlertKindReadsBackAsItself) {
  const fs::path dir =
      fs::temp_directory_path() / ("inferscope-roundtrip-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::vector<wire::Record> alerts;
  for (uint8_t k = 0; k < wire::kAlertKindCount; ++k) {
    wire::AlertEpisode a;
    a.kind = static_cast<wire::AlertKind>(k);
    a.rank = 1;
    a.layer = k;
    a.expert = 10u + k;
    a.start_ns = (k + 1) * 1'000'000;
    a.end_ns = a.start_ns + 500'000;  // closed: an X event
    a.model = "demo";
    alerts.push_back(a);
    a.layer = 100u + k;
    a.end_ns = 0;  // still open: an i event named "... opened"
    alerts.push_back(a);
  }
  {
    TraceStoreOptions o;
    o.dir = dir.string();
    TraceStore store(o, nullptr, nullptr);
    std::string error;
    ASSERT_TRUE(store.open(error)) << error;
    wire::EncoderOptions eo;
    eo.source_id = 0;  // the collector's own records
    wire::FrameEncoder enc(eo);
    for (const auto& r : alerts) enc.add(r);
    std::vector<uint8_t> frame;
    enc.finish(frame);
    store.write(frame, 0);
  }
  std::string error;
  const auto files = trace_inputs(dir.string(), error);
  ASSERT_EQ(files.size(), 1u) << error;
  std::ostringstream out;
  ExportStats stats;
  ASSERT_TRUE(export_chrome_trace(files, out, {}, stats, error)) << error;
  fs::remove_all(dir);

  viewer::TraceModel model;
  const viewer::LoadResult r = viewer::load_chrome_json_text(out.str(), model);
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(model.alerts().size(), alerts.size());
  for (const auto& rec : alerts) {
    const auto& want = std::get<wire::AlertEpisode>(rec);
    bool found = false;
    for (const auto& got : model.alerts()) {
      if (got.alert.layer != want.layer) continue;
      found = true;
      EXPECT_EQ(got.alert.kind, want.kind) << wire::to_string(want.kind) << " layer " << want.layer;
      EXPECT_EQ(got.alert.expert, want.expert);
      EXPECT_EQ(got.alert.rank, want.rank);
      EXPECT_EQ(got.alert.start_ns, want.start_ns);
      EXPECT_EQ(got.alert.end_ns, want.end_ns);
    }
    EXPECT_TRUE(found) << wire::to_string(want.kind) << " layer " << want.layer;
  }
}
