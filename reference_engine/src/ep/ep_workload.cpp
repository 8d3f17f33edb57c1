// Scores bytes by where the model's routers send them (ep_workload.hpp).
#include "inferscope/engine/ep_workload.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

namespace inferscope::engine {

std::vector<HotByte> ep_hot_bytes(Model& model, int32_t ranks, int32_t rank, int32_t count) {
  const ModelConfig& c = model.config();
  const ExpertPlacement pl = ExpertPlacement::make(c.moe.experts, ranks, rank);
  const int32_t D = c.d_model, E = c.moe.experts, k = c.moe.top_k;
  Backend& be = model.backend();
  auto host = [&](const std::string& name) {
    const Tensor& t = model.weights().get(name);
    std::vector<float> v(static_cast<size_t>(t.elements()));
    be.download(t, v.data());
    return v;
  };
  const std::vector<float> embed = host("embed");
  // The router rows are in physical slot order under a relabelling placement;
  // score against the contiguous placement of the model's own expert ids, so
  // the workload does not depend on --ep-placement.
  auto logical = [&](int32_t layer, int32_t slot) {
    const std::vector<int32_t>* m = model.placement().relabel(layer);
    return m ? (*m)[static_cast<size_t>(slot)] : slot;
  };
  std::vector<double> hits(256, 0.0);
  int32_t moe_layers = 0;
  std::vector<float> x(static_cast<size_t>(D));
  std::vector<double> logit(static_cast<size_t>(E));
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int32_t l = 0; l < c.n_layers(); ++l) {
    if (!c.is_moe(l)) continue;
    ++moe_layers;
    const std::string p = "l" + std::to_string(l) + ".";
    const std::vector<float> router = host(p + "router"), norm = host(p + "norm2");
    const std::vector<float> bias =
        model.weights().has(p + "router_bias") ? host(p + "router_bias") : std::vector<float>{};
    for (int32_t b = 33; b <= 126; ++b) {
      double ss = 0;
      for (int32_t d = 0; d < D; ++d)
        ss += static_cast<double>(embed[static_cast<size_t>(b * D + d)]) *
              embed[static_cast<size_t>(b * D + d)];
      const double inv = 1.0 / std::sqrt(ss / D + c.norm_eps);
      for (int32_t d = 0; d < D; ++d)
        x[static_cast<size_t>(d)] =
            static_cast<float>(embed[static_cast<size_t>(b * D + d)] * inv) *
            norm[static_cast<size_t>(d)];
      for (int32_t e = 0; e < E; ++e) {
        double s = 0;
        for (int32_t d = 0; d < D; ++d)
          s += static_cast<double>(router[static_cast<size_t>(e * D + d)]) *
               x[static_cast<size_t>(d)];
        // Selection only: softmax and sigmoid are monotonic, the bias steers.
        logit[static_cast<size_t>(e)] = s + (bias.empty() ? 0.0 : bias[static_cast<size_t>(e)]);
      }
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t z) {
        return logit[static_cast<size_t>(a)] > logit[static_cast<size_t>(z)];
      });
      for (int32_t j = 0; j < std::min(k, E); ++j)
        if (pl.owner(logical(l, order[static_cast<size_t>(j)])) == rank)
          hits[static_cast<size_t>(b)] += 1.0;
    }
  }
  std::vector<HotByte> out;
  for (int32_t b = 33; b <= 126; ++b)
    out.push_back({b, moe_layers
                          ? hits[static_cast<size_t>(b)] / (static_cast<double>(k) * moe_layers)
                          : 0.0});
  std::stable_sort(out.begin(), out.end(),
                   [](const HotByte& a, const HotByte& z) { return a.share > z.share; });
  out.resize(static_cast<size_t>(std::clamp<int32_t>(count, 1, static_cast<int32_t>(out.size()))));
  return out;
}

}  // namespace inferscope::engine
