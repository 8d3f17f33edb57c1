// Synthetic workload generator.
#include "inferscope/engine/workload.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

#include "inferscope/engine/weights.hpp"

namespace inferscope::engine {

WorkloadSpec workload_by_name(const std::string& name) {
  WorkloadSpec s;
  s.name = name;
  if (name == "skewed-multimodal") return s;
  if (name == "text") {
    s.image_fraction = 0.0;
    return s;
  }
  if (name == "skewed-ep") {
    // One topic dominates all the time; the caller sets fixed_topic to the
    // topic whose hot experts sit on rank 0's shard (ep_hot_topic), so rank 0
    // is the hot rank. 0 until then.
    s.image_fraction = 0.0;
    s.dominant_share = 0.9;
    s.fixed_topic = 0;
    return s;
  }
  if (name == "balanced") {
    s.image_fraction = 0.0;
    s.dominant_share = 0.0;
    s.system_prompt_fraction = 0.0;
    s.neutral_text = true;  // no topic bytes: no expert preference
    return s;
  }
  std::string known;
  for (const auto& n : workload_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown workload '" + name + "' (known: " + known + ")");
}

std::vector<std::string> workload_names() {
  return {"skewed-multimodal", "balanced", "text", "skewed-ep"};
}

std::vector<float> synthetic_image(int32_t size, int32_t topic, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const float tint[4][3] = {{1, 0.3f, 0.2f}, {0.2f, 1, 0.3f}, {0.2f, 0.3f, 1}, {1, 1, 0.2f}};
  const float* c = tint[(topic < 0 ? 0 : topic) % 4];
  float fx = 1.0f + 6.0f * u(rng), fy = 1.0f + 6.0f * u(rng), ph = 6.28f * u(rng);
  std::vector<float> px(static_cast<size_t>(size) * size * 3);
  for (int32_t y = 0; y < size; ++y)
    for (int32_t x = 0; x < size; ++x) {
      float v = 0.5f + 0.5f * std::sin(fx * x / size * 6.28f + fy * y / size * 6.28f + ph);
      for (int32_t ch = 0; ch < 3; ++ch)
        px[static_cast<size_t>((y * size + x) * 3 + ch)] =
            std::clamp(v * c[ch] + 0.05f * u(rng), 0.0f, 1.0f);
    }
  return px;
}

std::vector<float> load_ppm(const std::string& path, int32_t size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open image '" + path + "'");
  std::string magic;
  int w = 0, h = 0, maxval = 0;
  in >> magic;
  auto skip_comments = [&] {
    in >> std::ws;
    while (in.peek() == '#') {
      std::string line;
      std::getline(in, line);
      in >> std::ws;
    }
  };
  skip_comments();
  in >> w;
  skip_comments();
  in >> h;
  skip_comments();
  in >> maxval;
  in.get();
  if (magic != "P6" || w <= 0 || h <= 0 || w > 16384 || h > 16384 || maxval <= 0 || maxval > 255)
    throw std::runtime_error(
        "'" + path +
        "' is not a binary PPM (P6, 8-bit); convert PNGs with `convert in.png out.ppm`");
  std::vector<unsigned char> raw(static_cast<size_t>(w) * h * 3);
  in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  if (!in) throw std::runtime_error("'" + path + "': truncated pixel data");
  std::vector<float> px(static_cast<size_t>(size) * size * 3);
  for (int32_t y = 0; y < size; ++y)
    for (int32_t x = 0; x < size; ++x) {
      size_t sx = static_cast<size_t>(x) * w / size, sy = static_cast<size_t>(y) * h / size;
      for (int32_t c = 0; c < 3; ++c)
        px[static_cast<size_t>((y * size + x) * 3 + c)] =
            raw[(sy * w + sx) * 3 + c] / static_cast<float>(maxval);
    }
  return px;
}

WorkloadGenerator::WorkloadGenerator(WorkloadSpec spec, const ModelConfig& model, uint64_t seed)
    : spec_(std::move(spec)), model_(model), rng_(seed) {
  const int32_t topics = std::max(1, model_.init.topics);
  system_prompts_.resize(static_cast<size_t>(topics));
  for (int32_t t = 0; t < topics; ++t)
    for (int32_t i = 0; i < spec_.system_prompts_per_topic; ++i)
      system_prompts_[static_cast<size_t>(t)].push_back(text(t, spec_.system_prompt_tokens));
}

int32_t WorkloadGenerator::dominant_topic(double t_s) const {
  if (spec_.fixed_topic >= 0) return spec_.fixed_topic;
  const int32_t topics = std::max(1, model_.init.topics);
  return static_cast<int32_t>(std::floor(t_s / std::max(1e-3, spec_.topic_period))) % topics;
}

std::vector<int32_t> WorkloadGenerator::text(int32_t topic, int32_t tokens) {
  // Words of 2..8 letters from the topic's bytes (topic -1: lowercase
  // letters, which carry no topic), separated by spaces.
  const int32_t topics = std::max(1, model_.init.topics);
  std::vector<int32_t> alphabet;
  if (topic >= 0 && topic == spec_.fixed_topic && !spec_.alphabet.empty())
    alphabet = spec_.alphabet;
  if (alphabet.empty())
    for (int32_t b = 33; b <= 126; ++b)
      if (topic_of_byte(b, topics) == topic) alphabet.push_back(b);
  if (alphabet.empty())
    for (int32_t b = 'a'; b <= 'z'; ++b) alphabet.push_back(b);
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::uniform_int_distribution<int32_t> word(2, 8);
  std::vector<int32_t> out;
  int32_t left = word(rng_);
  while (static_cast<int32_t>(out.size()) < tokens) {
    if (left-- == 0) {
      out.push_back(' ');
      left = word(rng_);
    } else {
      out.push_back(alphabet[pick(rng_)]);
    }
  }
  return out;
}

Request WorkloadGenerator::next(double* arrival_s) {
  std::exponential_distribution<double> gap(spec_.rate > 0 ? spec_.rate : 1.0);
  clock_s_ += spec_.rate > 0 ? gap(rng_) : 0.0;
  *arrival_s = clock_s_;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int32_t topics = std::max(1, model_.init.topics);
  int32_t topic = u(rng_) < spec_.dominant_share
                      ? dominant_topic(clock_s_)
                      : std::uniform_int_distribution<int32_t>(0, topics - 1)(rng_);
  if (spec_.neutral_text) topic = -1;
  Request r;
  r.id = next_id_++;
  r.topic = topic;
  r.temperature = spec_.temperature;
  r.seed = rng_();
  if (topic >= 0 && u(rng_) < spec_.system_prompt_fraction) {
    const auto& sp = system_prompts_[static_cast<size_t>(topic)];
    const auto& chosen = sp[std::uniform_int_distribution<size_t>(0, sp.size() - 1)(rng_)];
    r.text = chosen;
  }
  std::lognormal_distribution<double> plen(std::log(spec_.prompt_mean), spec_.prompt_sigma);
  std::lognormal_distribution<double> olen(std::log(spec_.output_mean), spec_.output_sigma);
  auto user = text(topic, std::clamp(static_cast<int32_t>(plen(rng_)), 1, 1024));
  r.text.insert(r.text.end(), user.begin(), user.end());
  r.max_new_tokens = std::clamp(static_cast<int32_t>(olen(rng_)), 1, spec_.max_output);
  if (model_.vision.enabled && u(rng_) < spec_.image_fraction)
    r.image = fixed_image_.empty() ? synthetic_image(model_.vision.image_size, topic, r.seed)
                                   : fixed_image_;
  return r;
}

}  // namespace inferscope::engine
