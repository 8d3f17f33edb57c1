// Little-endian fixed-width and LEB128 varint primitives for the codec.
// ByteReader never reads past its end: every getter reports failure instead.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace inferscope::wire::detail {

inline uint64_t zigzag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
inline int64_t unzigzag(uint64_t v) {
  return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1);
}

// Writes v as a varint at dst, advancing it, without a bounds check: the
// caller has room for 10 bytes (the span encoder, the column split).
[[gnu::always_inline]] inline void put_varint(uint8_t*& dst, uint64_t v) {
  while (v >= 0x80) {
    *dst++ = static_cast<uint8_t>(v) | 0x80;
    v >>= 7;
  }
  *dst++ = static_cast<uint8_t>(v);
}

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>& out) : out_(out) {}

  void u8(uint8_t v) { out_.push_back(v); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<uint8_t>(v) | 0x80);
      v >>= 7;
    }
    out_.push_back(static_cast<uint8_t>(v));
  }
  void svarint(int64_t v) { varint(zigzag(v)); }
  void f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    fixed(bits, 4);
  }
  void f64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    fixed(bits, 8);
  }
  void fixed(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void string(const std::string& s) {
    varint(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }

 private:
  std::vector<uint8_t>& out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> in) : in_(in) {}

  bool u8(uint8_t& v) {
    if (pos_ >= in_.size()) return false;
    v = in_[pos_++];
    return true;
  }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= in_.size()) return false;
      uint8_t byte = in_[pos_++];
      v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return true;
    }
    return false;  // more than 10 bytes: not a varint we wrote
  }
  bool varint32(uint32_t& v) {
    uint64_t wide;
    if (!varint(wide) || wide > UINT32_MAX) return false;
    v = static_cast<uint32_t>(wide);
    return true;
  }
  bool svarint(int64_t& v) {
    uint64_t raw;
    if (!varint(raw)) return false;
    v = unzigzag(raw);
    return true;
  }
  bool fixed(uint64_t& v, int bytes) {
    if (in_.size() - pos_ < static_cast<size_t>(bytes)) return false;
    v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(in_[pos_ + i]) << (8 * i);
    pos_ += bytes;
    return true;
  }
  bool f32(float& v) {
    uint64_t bits;
    if (!fixed(bits, 4)) return false;
    uint32_t b32 = static_cast<uint32_t>(bits);
    std::memcpy(&v, &b32, 4);
    return true;
  }
  bool f64(double& v) {
    uint64_t bits;
    if (!fixed(bits, 8)) return false;
    std::memcpy(&v, &bits, 8);
    return true;
  }
  bool string(std::string& s, uint32_t max_bytes) {
    uint64_t n;
    if (!varint(n) || n > max_bytes || n > in_.size() - pos_) return false;
    s.assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  size_t remaining() const { return in_.size() - pos_; }
  size_t position() const { return pos_; }
  bool at_end() const { return pos_ == in_.size(); }

 private:
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
};

}  // namespace inferscope::wire::detail
