// A deterministic generator of collector-like traces (see sample_trace.hpp).
#include "inferscope/viewer/sample_trace.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/episode_id.hpp"
#include "inferscope/wire/trace_file.hpp"

namespace inferscope::viewer {
namespace {

using namespace inferscope::wire;

enum Str : uint32_t {
  kStep = 1,
  kSchedule,
  kForward,
  kLaunch,
  kSample,
  kMemcpy,
  kAttnKernel,
  kSsmKernel,
  kRouterKernel,
  kGemmKernel,
  kMlpKernel,
  kSampleKernel,
  kArgStep,
  kArgBatch,
  kArgTokens,
  kArgLayer,
  kArgExperts,
  kEncodeImage,
  kVisionKernel,
  kArgRequest,
  kArgCapture,
  kFirstLayerName  // then one name per layer
};

const char* kStrings[] = {"",
                          "step",
                          "schedule",
                          "forward",
                          "cudaLaunchKernel",
                          "sample",
                          "memcpy HtoD",
                          "flash_attn_fwd",
                          "ssm_chunk_scan",
                          "moe_router_topk",
                          "moe_grouped_gemm",
                          "dense_mlp_gemm",
                          "sample_tokens",
                          "step",
                          "batch",
                          "tokens",
                          "layer",
                          "experts",
                          "encode_image",
                          "vision_encoder_fwd",
                          "request",
                          "capture"};

struct Emitter {
  FrameEncoder enc;
  const FrameSink* sink;
  SampleSummary* sum;
  Emitter(uint32_t source, bool compress, const FrameSink* s, SampleSummary* summary)
      : enc([&] {
          EncoderOptions o;
          o.source_id = source;
          o.compress = compress;
          return o;
        }()),
        sink(s),
        sum(summary) {}
  std::vector<uint8_t> buf;
  template <typename R>
  void add(const R& r) {
    enc.add(Record(r));
    if (enc.record_count() >= 8192 || enc.full()) flush();
  }
  void add(const Span& s) {
    enc.add(s);
    ++sum->spans;
    if (enc.record_count() >= 8192 || enc.full()) flush();
  }
  void flush() {
    if (enc.empty()) return;
    buf.clear();
    enc.finish(buf);
    ++sum->frames;
    sum->bytes += buf.size();
    (*sink)(buf);
  }
};

struct PendingRequest {
  RequestEvent event;
  std::vector<StageTiming> stages;
};

}  // namespace

SampleSummary generate_sample_trace(const SampleOptions& o, const FrameSink& sink) {
  SampleSummary sum;
  const uint32_t ranks = std::max<uint32_t>(1, o.ranks);
  const uint32_t layers = std::clamp<uint32_t>(o.layers, 1, 64);
  const uint32_t experts = std::clamp<uint32_t>(o.experts, 2, 256);
  const int64_t t0 = o.t0_ns;
  const int64_t total_ns = static_cast<int64_t>(o.seconds * 1e9);
  auto is_moe = [](uint32_t l) { return l % 2 == 1; };
  auto is_ssm = [](uint32_t l) { return l % 4 >= 2; };
  uint32_t moe_layers = 0;
  for (uint32_t l = 0; l < layers; ++l) moe_layers += is_moe(l);
  const uint64_t spans_per_step = 4 + 2 + 3ull * layers + 2ull * layers + 2ull * moe_layers;
  const uint64_t steps = std::max<uint64_t>(10, o.target_spans / (ranks * spans_per_step));
  const int64_t step_ns = std::max<int64_t>(1000, total_ns / static_cast<int64_t>(steps));
  const uint32_t hot_layer = is_moe(o.hot_layer % layers) ? o.hot_layer % layers : 1 % layers;

  // The hot-expert episode (emitted at the end, by the collector's source) asked the hot rank's
  // agent for a GPU capture: that rank's kernels of the next kCaptureSteps steps after the
  // episode opened carry the argument capture = the episode's tag, as the agent writes it.
  auto at_s = [&](double s) { return t0 + static_cast<int64_t>(s * 1e9); };
  AlertEpisode hot_alert;
  hot_alert.kind = AlertKind::kHotExpert;
  hot_alert.rank = o.hot_rank;
  hot_alert.layer = hot_layer;
  hot_alert.expert = o.hot_expert % experts;
  hot_alert.start_ns = at_s(o.hot_from_s + 1.5);
  hot_alert.end_ns = at_s(o.hot_to_s + 0.5);
  hot_alert.model = "hybrid-moe";
  constexpr int64_t kCaptureSteps = 8;
  const auto capture_tag = static_cast<int64_t>(episode_capture_tag(hot_alert));
  const int64_t capture_end = hot_alert.start_ns + kCaptureSteps * step_ns;

  // Expert parallelism: contiguous shards; the hot expert's owner is the hot EP rank.
  const uint32_t per_rank = std::max<uint32_t>(1, (experts + ranks - 1) / ranks);
  auto ep_owner = [&](uint32_t x) { return std::min(x / per_rank, ranks - 1); };
  const uint32_t ep_hot_rank = ep_owner(o.hot_expert % experts);
  // Per step: each rank's routed counts per MoE layer, turned into EP records once all ranks
  // routed.
  std::vector<std::vector<std::vector<uint32_t>>> step_counts(
      ranks, std::vector<std::vector<uint32_t>>(layers));
  std::vector<std::vector<int64_t>> step_layer_ts(ranks, std::vector<int64_t>(layers, 0));

  std::vector<std::unique_ptr<Emitter>> em;
  em.push_back(std::make_unique<Emitter>(kCollectorSource, o.compress, &sink, &sum));
  for (uint32_t r = 0; r < ranks; ++r)
    em.push_back(std::make_unique<Emitter>(r + 1, o.compress, &sink, &sum));

  // [SECTION] Per source: hello and strings first, as the collector replays them.
  for (uint32_t r = 0; r < ranks; ++r) {
    Emitter& e = *em[r + 1];
    Hello h;
    h.service = "inferscope-engine";
    h.host = "node-a";
    h.pid = 41000 + r;
    h.instance = h.host + ":" + std::to_string(h.pid);
    h.rank = r;
    h.world_size = ranks;
    h.model.name = "hybrid-moe";
    for (uint32_t l = 0; l < layers; ++l)
      h.model.layers.push_back({is_ssm(l) ? LayerKind::kSsm : LayerKind::kAttention,
                                is_moe(l) ? FfnKind::kMoe : FfnKind::kDense,
                                static_cast<uint16_t>(is_moe(l) ? experts : 0)});
    h.model.top_k = static_cast<uint16_t>(o.top_k);
    h.model.capacity_factor = 1.25f;
    for (uint32_t x = 0; x < experts; ++x)
      h.model.expert_to_rank.push_back(o.expert_parallel ? ep_owner(x)
                                                         : x % std::max<uint32_t>(ranks, 4) % 4);
    e.add(h);
    for (uint32_t i = 1; i < sizeof(kStrings) / sizeof(kStrings[0]); ++i)
      e.add(StringDef{i, kStrings[i]});
    for (uint32_t l = 0; l < layers; ++l) {
      char name[64];
      std::snprintf(name, sizeof(name), "layer %02u %s%s", l, is_ssm(l) ? "ssm" : "attn",
                    is_moe(l) ? "+moe" : "");
      e.add(StringDef{kFirstLayerName + l, name});
    }
  }

  // [SECTION] Requests: Poisson arrivals; stage records at their finish.
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  std::vector<std::vector<PendingRequest>> reqs(ranks);
  uint64_t next_id = 1;
  for (uint32_t r = 0; r < ranks; ++r) {
    double t = 0.05;
    while (true) {
      t += -std::log(1.0 - U(rng)) / std::max(0.1, o.requests_per_s);
      if (t > o.seconds - 1.0) break;
      PendingRequest p;
      RequestEvent& q = p.event;
      q.request_id = next_id++;
      q.arrival_ns = t0 + static_cast<int64_t>(t * 1e9);
      bool image = U(rng) < 0.4;
      int64_t cur = q.arrival_ns + static_cast<int64_t>(U(rng) * 3e6);
      auto stage = [&](Stage s, double ms) {
        StageTiming st{q.request_id, s, Device::kGpu, cur, cur + static_cast<int64_t>(ms * 1e6), 0};
        st.gpu_ns = (st.end_ns - st.start_ns) * 8 / 10;
        cur = st.end_ns;
        p.stages.push_back(st);
      };
      if (image) {
        stage(Stage::kEncoder, 8 + 14 * U(rng));
        stage(Stage::kConnector, 1 + 2 * U(rng));
      }
      q.prompt_tokens = 64 + static_cast<uint32_t>(U(rng) * 900);
      q.image_tokens = image ? 576 : 0;
      q.cached_tokens =
          static_cast<uint32_t>(q.prompt_tokens * (U(rng) < 0.6 ? 0.5 + 0.4 * U(rng) : 0.0));
      stage(Stage::kBackbonePrefill, 6 + q.prompt_tokens * 0.03 * (1 + U(rng)));
      q.first_token_ns = cur;
      q.output_tokens = 8 + static_cast<uint32_t>(U(rng) * 120);
      stage(Stage::kBackboneDecode, q.output_tokens * (9 + 4 * U(rng)));
      q.finish_ns = cur;
      q.status = U(rng) < 0.02 ? RequestStatus::kCancelled : RequestStatus::kOk;
      reqs[r].push_back(std::move(p));
    }
    std::sort(reqs[r].begin(), reqs[r].end(), [](const PendingRequest& a, const PendingRequest& b) {
      return a.event.finish_ns < b.event.finish_ns;
    });
  }
  std::vector<size_t> req_next(ranks, 0);

  // [SECTION] Steps
  std::vector<uint64_t> correlation(ranks, 1);
  std::vector<int64_t> gpu_free(ranks, t0);
  const int64_t sample_every = 50'000'000;  // memory / prefix cache every 50 ms
  std::vector<int64_t> next_sample(ranks, t0);
  std::vector<uint32_t> counts(experts);
  std::vector<double> w(experts);
  const uint32_t sched_tid = 4001;

  for (uint64_t step = 0; step < steps; ++step) {
    for (uint32_t r = 0; r < ranks; ++r) {
      Emitter& e = *em[r + 1];
      const int64_t s0 =
          t0 + static_cast<int64_t>(step) * step_ns + static_cast<int64_t>(r) * step_ns / 7;
      const double ts = double(s0 - t0) * 1e-9;
      const bool in_window = ts >= o.hot_from_s && ts < o.hot_to_s;
      const bool hot = (o.expert_parallel || r == o.hot_rank) && in_window;
      const uint32_t batch_tokens = 64 + static_cast<uint32_t>(U(rng) * 192);
      auto cpu = [&](uint32_t name, uint16_t depth, int64_t a, int64_t b, uint64_t corr = 0,
                     SpanCategory cat = SpanCategory::kCpuRange) {
        Span s;
        s.track_kind = TrackKind::kCpuThread;
        s.track_id = sched_tid + r * 10;
        s.name_id = name;
        s.category = cat;
        s.depth = depth;
        s.start_ns = a;
        s.end_ns = std::max(a, b);
        s.correlation_id = corr;
        return s;
      };
      // Launch a kernel: a runtime span on the CPU and the kernel on stream 7,
      // linked by a correlation id, the kernel queued behind earlier ones.
      auto launch = [&](uint16_t depth, int64_t at, uint32_t kernel, int64_t gpu_dur,
                        uint32_t layer_arg) {
        uint64_t corr = correlation[r]++;
        int64_t launch_dur = std::max<int64_t>(200, step_ns / 400);
        e.add(cpu(kLaunch, depth, at, at + launch_dur, corr, SpanCategory::kRuntime));
        Span k;
        k.track_kind = TrackKind::kGpuStream;
        k.track_id = r;
        k.stream = 7;
        k.name_id = kernel;
        k.category = SpanCategory::kKernel;
        k.start_ns = std::max(at + launch_dur / 2 + 300, gpu_free[r]);
        k.end_ns = k.start_ns + std::max<int64_t>(100, gpu_dur);
        k.correlation_id = corr;
        k.num_args = 1;
        k.args[0] = {kArgLayer, layer_arg};
        if (r == hot_alert.rank && at >= hot_alert.start_ns && at < capture_end) {
          k.args[k.num_args++] = {kArgCapture, capture_tag};
          ++sum.captured_kernels;
        }
        gpu_free[r] = k.end_ns;
        e.add(k);
        ++sum.kernels;
        return at + launch_dur;
      };

      const int64_t step_end = s0 + step_ns * 97 / 100;
      Span st = cpu(kStep, 0, s0, step_end);
      st.num_args = 2;
      st.args[0] = {kArgStep, static_cast<int64_t>(step)};
      st.args[1] = {kArgBatch, batch_tokens};
      e.add(st);
      const int64_t fwd0 = s0 + step_ns * 6 / 100;
      const int64_t fwd1 = s0 + step_ns * 88 / 100;
      e.add(cpu(kSchedule, 1, s0 + step_ns / 100, fwd0 - step_ns / 200));
      e.add(cpu(kForward, 1, fwd0, fwd1));
      {  // copy the batch's token ids in
        Span c;
        c.track_kind = TrackKind::kGpuStream;
        c.track_id = r;
        c.stream = 8;
        c.name_id = kMemcpy;
        c.category = SpanCategory::kMemcpy;
        c.start_ns = fwd0 - step_ns / 50;
        c.end_ns = fwd0 - step_ns / 100;
        e.add(c);
      }
      const int64_t slice = (fwd1 - fwd0) / layers;
      for (uint32_t l = 0; l < layers; ++l) {
        int64_t l0 = fwd0 + slice * l + slice / 40, l1 = fwd0 + slice * (l + 1) - slice / 40;
        e.add(cpu(kFirstLayerName + l, 2, l0, l1));
        double scale = (hot && l == hot_layer) ? 1.8 : 1.0;  // the hot expert's device is slow
        int64_t at =
            launch(3, l0 + slice / 20, is_ssm(l) ? kSsmKernel : kAttnKernel, slice * 35 / 100, l);
        if (is_moe(l)) {
          at = launch(3, at + slice / 20, kRouterKernel, slice * 6 / 100, l);
          launch(3, at + slice / 20, kGemmKernel, static_cast<int64_t>(slice * 40 / 100 * scale),
                 l);
        } else {
          launch(3, at + slice / 20, kMlpKernel, slice * 35 / 100, l);
        }
        if (!is_moe(l)) continue;
        // Router result for this MoE layer: skewed to the hot expert while hot.
        double sumw = 0;
        for (uint32_t x = 0; x < experts; ++x) {
          w[x] = 1.0 + 0.35 * U(rng);
          if (hot && l == hot_layer && x == o.hot_expert % experts) w[x] = 6.5;
          if (l == hot_layer && x == (o.hot_expert + 7) % experts) w[x] *= 0.25;  // a cold one
          if (o.expert_parallel && hot && ep_owner(x) == ep_hot_rank)
            w[x] *= 1.8;  // skewed workload
          sumw += w[x];
        }
        uint32_t assignments = batch_tokens * o.top_k, given = 0;
        for (uint32_t x = 0; x < experts; ++x) {
          counts[x] = static_cast<uint32_t>(assignments * w[x] / sumw);
          given += counts[x];
        }
        while (given < assignments) {
          ++counts[static_cast<uint32_t>(U(rng) * experts) % experts];
          ++given;
        }
        uint32_t capacity =
            static_cast<uint32_t>(std::ceil(1.25 * batch_tokens * o.top_k / experts));
        ExpertLoad load;
        load.step = step;
        load.layer = l;
        load.timestamp_ns = l1;
        load.tokens = batch_tokens;
        for (uint32_t x = 0; x < experts; ++x)
          load.dropped += counts[x] > capacity ? counts[x] - capacity : 0;
        load.routed.assign(counts.begin(), counts.end());
        e.add(load);
        step_counts[r][l].assign(counts.begin(), counts.end());
        step_layer_ts[r][l] = l0 + slice / 3;
        ++sum.expert_loads;
      }
      launch(2, fwd1 + step_ns / 100, kSampleKernel, step_ns * 3 / 100, layers);
      e.add(cpu(kSample, 1, fwd1 + step_ns / 200, step_end - step_ns / 200));

      while (next_sample[r] <= step_end) {
        int64_t t = next_sample[r];
        double x = double(t - t0) * 1e-9;
        const uint64_t GiB = 1ull << 30;
        double saw = std::fmod(x, 7.0) / 7.0;
        e.add(MemorySample{t, r, MemoryKind::kKvCache,
                           static_cast<uint64_t>((0.25 + 0.55 * saw + 0.05 * U(rng)) * 16 * GiB),
                           16 * GiB});
        e.add(MemorySample{t, r, MemoryKind::kSsmState,
                           static_cast<uint64_t>((0.8 + 1.2 * saw) * GiB / 2), 2 * GiB});
        e.add(MemorySample{t, r, MemoryKind::kSsmCheckpoints,
                           static_cast<uint64_t>(std::min(1.0, x / o.seconds * 1.1) * GiB * 0.9),
                           GiB});
        e.add(MemorySample{t, r, MemoryKind::kWeights, 10 * GiB, 10 * GiB});
        uint64_t aq = 1500 + static_cast<uint64_t>(U(rng) * 1000);
        uint64_t sq = aq;
        // SSM layers reuse a prefix only at checkpointed boundaries: fewer hits,
        // improving as the checkpoint store fills.
        e.add(PrefixCacheSample{
            t, aq, static_cast<uint64_t>(aq * (0.55 + 0.15 * U(rng))), sq,
            static_cast<uint64_t>(sq *
                                  (0.05 + 0.3 * std::min(1.0, x / o.seconds) + 0.05 * U(rng)))});
        next_sample[r] += sample_every;
      }
      auto& rq = reqs[r];
      while (req_next[r] < rq.size() && rq[req_next[r]].event.finish_ns <= step_end) {
        const PendingRequest& p = rq[req_next[r]++];
        for (const StageTiming& s : p.stages) {
          e.add(s);
          ++sum.stages;
        }
        e.add(p.event);
        ++sum.requests;
      }
    }
    if (o.expert_parallel) {
      // Rows each rank's experts compute (all ranks' assignments to its experts),
      // rows each rank sends away; compute time follows the rows, and combine
      // includes waiting for the slowest rank, as on a real all-to-all.
      for (uint32_t l = 0; l < layers; ++l) {
        if (!is_moe(l)) continue;
        std::vector<uint32_t> computed(ranks, 0), sent(ranks, 0);
        std::vector<std::vector<uint32_t>> to_rank(ranks, std::vector<uint32_t>(ranks, 0));
        for (uint32_t src = 0; src < ranks; ++src)
          for (uint32_t x = 0; x < step_counts[src][l].size(); ++x) {
            computed[ep_owner(x)] += step_counts[src][l][x];
            to_rank[src][ep_owner(x)] += step_counts[src][l][x];  // the traffic matrix row
            if (ep_owner(x) != src) sent[src] += step_counts[src][l][x];
          }
        const int64_t ns_per_row = std::max<int64_t>(1, step_ns / 4000);
        int64_t slowest = 0;
        for (uint32_t k = 0; k < ranks; ++k)
          slowest = std::max<int64_t>(slowest, computed[k] * ns_per_row);
        for (uint32_t k = 0; k < ranks; ++k) {
          ExpertParallelStep eps;
          eps.step = step;
          eps.layer = l;
          eps.timestamp_ns = step_layer_ts[k][l];
          eps.rows_computed = computed[k];
          eps.rows_sent = sent[k];
          eps.row_bytes = 7168 * 2;  // a DeepSeek-V3-sized hidden state in bf16
          eps.rows_to_rank = to_rank[k];
          eps.compute_ns = computed[k] * ns_per_row;
          eps.dispatch_ns = step_ns / 200 + sent[k] * ns_per_row / 8;
          eps.combine_ns = step_ns / 200 + sent[k] * ns_per_row / 8 + (slowest - eps.compute_ns);
          em[k + 1]->add(eps);
        }
      }
    }
  }
  for (uint32_t r = 0; r < ranks; ++r) {
    while (req_next[r] < reqs[r].size()) {
      const PendingRequest& p = reqs[r][req_next[r]++];
      for (const StageTiming& s : p.stages) {
        em[r + 1]->add(s);
        ++sum.stages;
      }
      em[r + 1]->add(p.event);
      ++sum.requests;
    }
  }

  // [SECTION] The collector's episodes (source 0)
  hot_alert.peak_share = 6.5f / (6.5f + 1.17f * float(experts - 1));
  hot_alert.peak_utilization = hot_alert.peak_share * float(experts);
  em[0]->add(hot_alert);
  AlertEpisode drops = hot_alert;
  drops.kind = AlertKind::kDropBurst;
  drops.start_ns = at_s(o.hot_from_s + 2.0);
  drops.end_ns = at_s(o.hot_from_s + 4.5);
  em[0]->add(drops);
  AlertEpisode cold = hot_alert;
  cold.kind = AlertKind::kColdExpert;
  cold.expert = (o.hot_expert + 7) % experts;
  cold.start_ns = at_s(std::min(2.0, o.seconds / 4));
  cold.end_ns = 0;  // still open at the end of the trace
  cold.peak_share = 0.25f / float(experts);
  cold.peak_utilization = 0.25f;
  em[0]->add(cold);
  sum.alerts = 3;
  if (o.expert_parallel && ranks > 1) {
    AlertEpisode rank_hot = hot_alert;
    rank_hot.kind = AlertKind::kHotRank;
    rank_hot.rank = ep_hot_rank;
    rank_hot.start_ns = at_s(o.hot_from_s + 1.0);
    rank_hot.end_ns = at_s(o.hot_to_s + 0.5);
    rank_hot.peak_utilization = 1.6f;
    rank_hot.peak_share = 1.6f / float(ranks);
    em[0]->add(rank_hot);
    ++sum.alerts;
  }

  for (auto& e : em) e->flush();
  return sum;
}

bool write_sample_trace(const std::string& path, const SampleOptions& options,
                        SampleSummary* summary, std::string* error) {
  TraceFileWriter w;
  if (!w.open(path)) {
    if (error) *error = w.error();
    return false;
  }
  bool ok = true;
  SampleSummary s = generate_sample_trace(options, [&](std::span<const uint8_t> f) {
    if (ok && !w.write_frame(f)) ok = false;
  });
  if (!ok && error) *error = w.error();
  w.close();
  if (summary) *summary = s;
  return ok;
}

std::vector<uint8_t> sample_trace_bytes(const SampleOptions& options, SampleSummary* summary) {
  std::vector<uint8_t> out(kTraceFileHeaderBytes, 0);
  std::memcpy(out.data(), kTraceFileMagic, sizeof(kTraceFileMagic));
  out[8] = static_cast<uint8_t>(kProtocolVersion);
  SampleSummary s = generate_sample_trace(
      options, [&](std::span<const uint8_t> f) { out.insert(out.end(), f.begin(), f.end()); });
  if (summary) *summary = s;
  return out;
}

}  // namespace inferscope::viewer
