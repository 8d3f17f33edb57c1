// Reading safetensors files (one file, or the shards of a Hugging Face
// checkpoint): the format is a u64 little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}} (offsets relative to the end of the
// header) and the raw little-endian data. Tensors are read one at a time, so
// a model is never held whole on the host.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace inferscope::engine {

struct SafetensorsEntry {
  std::string file;             // path of the file holding it
  std::string dtype;            // "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;   // as stored
  uint64_t begin = 0, end = 0;  // absolute byte offsets in `file`
  int64_t elements() const;
};

class SafetensorsSet {
 public:
  // Parses one file's header and adds its tensors. Throws std::runtime_error
  // naming the file on a bad header, offsets outside the file, a size that
  // does not match dtype x shape, or a name another added file already holds.
  void add_file(const std::string& path);

  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  // Throws std::runtime_error when absent.
  const SafetensorsEntry& at(const std::string& name) const;
  std::vector<std::string> names() const;

  // The tensor's data widened to fp32 (F32, BF16 and F16 are read; any other
  // dtype throws naming the tensor).
  std::vector<float> read_f32(const std::string& name) const;
  // A BF16 tensor's bits as stored, into `out` (resized to its elements; a
  // caller reusing one buffer allocates and faults its pages in once, not per
  // tensor: what loading a 7B checkpoint costs otherwise). Throws naming the
  // tensor when it is not BF16.
  void read_bf16(const std::string& name, std::vector<uint16_t>& out) const;

 private:
  std::map<std::string, SafetensorsEntry> entries_;
};

// fp32 value of bf16 / IEEE half bits.
float bf16_bits_to_f32(uint16_t b);
float f16_bits_to_f32(uint16_t h);

}  // namespace inferscope::engine
