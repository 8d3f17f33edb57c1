// Synthetic serving traffic: Poisson arrivals, log-normal prompt and output
// lengths, shared system prompts (prefix-cache hits), a fraction of requests
// with an image, and topics whose mix changes over time.
//
// A topic is a class of bytes (topic_of_byte in weights.hpp); the model's
// seeded initialiser makes each topic prefer one routed expert per MoE layer,
// so when the traffic mix favours a topic that topic's experts run hot, and
// when the mix moves on they cool down again.
//
// Workloads:
//   skewed-multimodal  one dominant topic at a time (rotating every
//                      topic_period seconds), 30% of requests with an image,
//                      most prompts start with one of a few system prompts
//   balanced           text of topic-neutral bytes (lowercase letters) only:
//                      no expert preference, so load spreads by the router's
//                      own (random) weights
//   text               like skewed-multimodal without images
//   skewed-ep          expert parallelism's skew: text only, 90% of requests of
//                      one fixed topic (ep_hot_topic), written with the bytes
//                      the model's routers send to rank 0's experts
//                      (ep_hot_bytes in ep_workload.hpp; inferscope-engine
//                      sets both), so rank 0 is the hot rank; `balanced` is
//                      its counterpart
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "inferscope/engine/config.hpp"
#include "inferscope/engine/engine.hpp"

namespace inferscope::engine {

struct WorkloadSpec {
  std::string name = "skewed-multimodal";
  double rate = 4.0;          // requests per second (Poisson)
  double prompt_mean = 48.0;  // user text tokens (log-normal)
  double prompt_sigma = 0.5;
  double output_mean = 24.0;  // output tokens (log-normal)
  double output_sigma = 0.4;
  int32_t max_output = 128;
  double image_fraction = 0.3;
  double system_prompt_fraction = 0.7;
  int32_t system_prompts_per_topic = 2;
  int32_t system_prompt_tokens = 64;
  double dominant_share = 0.8;  // probability a request is of the dominant topic
  double topic_period = 60.0;   // seconds each topic dominates
  float temperature = 0.0f;
  bool neutral_text = false;      // text without topic bytes (balanced)
  int32_t fixed_topic = -1;       // >= 0: the dominant topic never rotates (skewed-ep)
  std::vector<int32_t> alphabet;  // non-empty: the fixed topic's text uses these bytes (skewed-ep:
                                  // ep_hot_bytes, the bytes the routers send to rank 0)
};

// Known names: skewed-multimodal, balanced, text. Throws for anything else.
WorkloadSpec workload_by_name(const std::string& name);
std::vector<std::string> workload_names();

// A seeded synthetic image: gradients and stripes tinted by the topic.
std::vector<float> synthetic_image(int32_t size, int32_t topic, uint64_t seed);
// Reads a binary PPM (P6, maxval <= 255) and resizes it (nearest) to size x size.
std::vector<float> load_ppm(const std::string& path, int32_t size);

class WorkloadGenerator {
 public:
  WorkloadGenerator(WorkloadSpec spec, const ModelConfig& model, uint64_t seed);
  // The next request; its arrival is `arrival_s` seconds after the start.
  Request next(double* arrival_s);
  // Use this image for every image request instead of synthetic ones.
  void set_image(std::vector<float> pixels) { fixed_image_ = std::move(pixels); }
  int32_t dominant_topic(double t_s) const;
  const WorkloadSpec& spec() const { return spec_; }

 private:
  std::vector<int32_t> text(int32_t topic, int32_t tokens);
  WorkloadSpec spec_;
  ModelConfig model_;
  std::mt19937_64 rng_;
  double clock_s_ = 0.0;
  uint64_t next_id_ = 1;
  std::vector<std::vector<std::vector<int32_t>>> system_prompts_;  // [topic][i]
  std::vector<float> fixed_image_;
};

}  // namespace inferscope::engine
