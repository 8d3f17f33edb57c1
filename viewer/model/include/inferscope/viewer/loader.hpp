// inferscope viewer: loading traces into a TraceModel.
//
// load_path() accepts a trace file (ISTRACE1 + frames), a directory of trace
// segments (every file in it that starts with the trace magic, in name order),
// or a Chrome Trace Event JSON file as written by inferscope-export. It keeps
// whatever it could recover and says what it could not in LoadResult.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "inferscope/viewer/trace_model.hpp"
#include "inferscope/wire/codec.hpp"

namespace inferscope::viewer {

struct LoadResult {
  bool ok = false;                    // false: nothing usable (error says why)
  std::string error;                  // fatal problem
  std::vector<std::string> warnings;  // damage reports, decode errors: data was lost
  uint64_t files = 0;
  uint64_t frames = 0;
  uint64_t records = 0;
  uint64_t bad_frames = 0;  // frames that passed the CRC but failed to decode

  // One paragraph for the status bar and stderr.
  std::string summary() const;
};

LoadResult load_path(const std::string& path, TraceModel& model);
LoadResult load_trace_file(const std::string& path, TraceModel& model);
LoadResult load_trace_bytes(std::vector<uint8_t> bytes, TraceModel& model);
LoadResult load_chrome_json(const std::string& path, TraceModel& model);
LoadResult load_chrome_json_text(const std::string& text, TraceModel& model);

// Decodes every record of one frame into the model (used by the live client too).
// Returns false, with message set, if the frame was bad; records before the
// error are kept.
bool ingest_frame(std::span<const uint8_t> frame, wire::FrameDecoder& decoder, TraceModel& model,
                  uint64_t& records, std::string& message);

}  // namespace inferscope::viewer
