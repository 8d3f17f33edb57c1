// safetensors headers and per-tensor reads (safetensors.hpp).
#include "inferscope/engine/safetensors.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace inferscope::engine {
namespace {

size_t dtype_bytes(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "BF16" || dtype == "F16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
    return 1;
  return 0;
}

}  // namespace

float bf16_bits_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(man), -24);  // subnormal (or zero)
  else if (exp == 31)
    v = man ? NAN : INFINITY;
  else
    v = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

int64_t SafetensorsEntry::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void SafetensorsSet::add_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot open safetensors file '" + path + "'");
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  unsigned char len[8] = {};
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (!in || file_size < 8 || n > file_size - 8 || n > (100u << 20))
    throw std::runtime_error(path + ": not a safetensors file (bad header length)");
  std::string h(n, '\0');
  in.read(h.data(), static_cast<std::streamsize>(n));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(h);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": safetensors header is not JSON: " + e.what());
  }
  if (!header.is_object()) throw std::runtime_error(path + ": safetensors header is not an object");
  const uint64_t data_start = 8 + n, data_bytes = file_size - data_start;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    SafetensorsEntry t;
    t.file = path;
    try {
      t.dtype = e.at("dtype").get<std::string>();
      t.shape = e.at("shape").get<std::vector<int64_t>>();
      auto off = e.at("data_offsets").get<std::vector<uint64_t>>();
      if (off.size() != 2 || off[1] < off[0] || off[1] > data_bytes)
        throw std::runtime_error("data_offsets outside the file");
      t.begin = data_start + off[0];
      t.end = data_start + off[1];
    } catch (const std::exception& ex) {
      throw std::runtime_error(path + ": tensor '" + name + "': " + ex.what());
    }
    const size_t eb = dtype_bytes(t.dtype);
    for (int64_t d : t.shape)
      if (d < 0)
        throw std::runtime_error(path + ": tensor '" + name + "' has a negative dimension");
    if (eb != 0 && static_cast<uint64_t>(t.elements()) * eb != t.end - t.begin)
      throw std::runtime_error(path + ": tensor '" + name + "' holds " +
                               std::to_string(t.end - t.begin) + " bytes, its " + t.dtype +
                               " shape needs " + std::to_string(t.elements() * eb));
    if (entries_.count(name))
      throw std::runtime_error(path + ": tensor '" + name + "' is also in '" +
                               entries_.at(name).file + "'");
    entries_.emplace(name, std::move(t));
  }
}

const SafetensorsEntry& SafetensorsSet::at(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw std::runtime_error("checkpoint has no tensor '" + name + "'");
  return it->second;
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> n;
  for (const auto& [name, e] : entries_) n.push_back(name);
  return n;
}

std::vector<float> SafetensorsSet::read_f32(const std::string& name) const {
  const SafetensorsEntry& t = at(name);
  const size_t n = static_cast<size_t>(t.elements());
  std::ifstream in(t.file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open safetensors file '" + t.file + "'");
  in.seekg(static_cast<std::streamoff>(t.begin));
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n * 4));
  } else if (t.dtype == "BF16" || t.dtype == "F16") {
    std::vector<uint16_t> raw(n);
    in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(n * 2));
    const bool bf = t.dtype == "BF16";
    for (size_t i = 0; i < n; ++i) out[i] = bf ? bf16_bits_to_f32(raw[i]) : f16_bits_to_f32(raw[i]);
  } else {
    throw std::runtime_error(t.file + ": tensor '" + name + "' is " + t.dtype +
                             " (F32, BF16 and F16 are read)");
  }
  if (!in) throw std::runtime_error(t.file + ": truncated data for '" + name + "'");
  return out;
}

void SafetensorsSet::read_bf16(const std::string& name, std::vector<uint16_t>& out) const {
  const SafetensorsEntry& t = at(name);
  if (t.dtype != "BF16")
    throw std::runtime_error(t.file + ": tensor '" + name + "' is " + t.dtype + ", not BF16");
  const size_t n = static_cast<size_t>(t.elements());
  std::ifstream in(t.file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open safetensors file '" + t.file + "'");
  in.seekg(static_cast<std::streamoff>(t.begin));
  out.resize(n);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n * 2));
  if (!in) throw std::runtime_error(t.file + ": truncated data for '" + name + "'");
}

}  // namespace inferscope::engine
