// Selective SSM (Mamba-style) scan.
//
// A thread owns one (channel d, state n) pair; the d_state lanes of a channel
// sit in one warp, so y = sum_n C*h is a few shuffles. Short runs (decode: one
// row per sequence) scan directly from the stored state. Long runs (prefill)
// use a chunked scan: (1) each chunk scans from h = 0 and records its end state
// and its total decay prod(exp(dt*A)); (2) one pass per (sequence, d, n) walks
// the chunks to get each chunk's true initial state and the final state;
// (3) each chunk rescans from its initial state and writes y. Twice the
// arithmetic, but the time dimension runs in parallel.
#include <stdexcept>

#include "check.hpp"
#include "kernels.hpp"

namespace inferscope::engine::cuda {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float softplus(float v) {
  return v > 20.f ? v : log1pf(expf(v));
}

struct ChunkGeom {
  int seq, chunk, row0, row1;
};

// grid.x = channel blocks, grid.y = chunk, grid.z = seq
__device__ bool geom(const SsmScanArgs& a, int chunks, ChunkGeom& g) {
  g.seq = blockIdx.z;
  g.chunk = blockIdx.y;
  int start = a.seq_start[g.seq], end = a.seq_start[g.seq + 1];
  g.row0 = start + g.chunk * a.chunk;
  g.row1 = min(end, g.row0 + a.chunk);
  (void)chunks;
  return g.row0 < end;
}

// mode 0: direct scan from the stored state (writes y and the state)
// mode 1: chunk scan from zero (writes end state and decay to scratch)
// mode 3: chunk rescan from the carried initial state in scratch (writes y)
template <int MODE>
__global__ void scan_k(SsmScanArgs a, int chunks) {
  const int lanes = a.d_state;
  const int d = blockIdx.x * (kThreads / lanes) + threadIdx.x / lanes;
  const int n = threadIdx.x % lanes;
  ChunkGeom g;
  bool active = geom(a, chunks, g) && d < a.d_inner;
  // every lane of the warp takes part in the shuffles below, active or not
  const int64_t sidx = ((int64_t)d) * a.d_state + n;
  float h = 0.f, decay_log = 0.f;
  float* hstate = nullptr;
  const int64_t per_chunk = (int64_t)a.d_inner * a.d_state;
  float* hend = a.scratch;  // [seqs][chunks][d][n]
  float* dec = a.scratch ? a.scratch + (int64_t)a.seqs * chunks * per_chunk : nullptr;
  const int64_t cidx = ((int64_t)g.seq * chunks + g.chunk) * per_chunk + sidx;
  if (active) {
    if (MODE == 0) {
      hstate = a.states.p + (int64_t)a.state_slot[g.seq] * a.states.stride + sidx;
      h = *hstate;
    } else if (MODE == 3) {
      h = hend[cidx];  // pass 2 left the chunk's initial state here
    }
  }
  const float A = active ? a.a[sidx] : 0.f;
  const float bias = (active && a.dt_bias) ? a.dt_bias[d] : 0.f;
  const float dsk = (active && a.d_skip) ? a.d_skip[d] : 0.f;
  const int rows = active ? g.row1 - g.row0 : 0;
  // the warp loops to its longest row count so shuffles stay converged
  int wrows = rows;
  for (int o = 16; o > 0; o >>= 1) wrows = max(wrows, __shfl_xor_sync(0xffffffffu, wrows, o));
  for (int i = 0; i < wrows; ++i) {
    float contrib = 0.f, xv = 0.f;
    if (i < rows) {
      int r = g.row0 + i;
      xv = a.x.p[(int64_t)r * a.x.stride + d];
      const float dt = softplus(a.dt.p[(int64_t)r * a.dt.stride + d] + bias);
      float dA = dt * A;
      h = expf(dA) * h + dt * a.b.p[(int64_t)r * a.b.stride + n] * xv;
      decay_log += dA;
      contrib = a.c.p[(int64_t)r * a.c.stride + n] * h;
    }
    if (MODE != 1) {
      for (int o = lanes / 2; o > 0; o >>= 1) contrib += __shfl_xor_sync(0xffffffffu, contrib, o);
      if (i < rows && n == 0) a.y.p[(int64_t)(g.row0 + i) * a.y.stride + d] = contrib + dsk * xv;
    }
  }
  if (!active) return;
  if (MODE == 0) *hstate = h;
  if (MODE == 1) {
    hend[cidx] = h;
    dec[cidx] = decay_log;
  }
}

// pass 2: thread per (seq, d, n); turns chunk end states (from 0) into chunk
// initial states in place and writes the sequence's final state.
__global__ void carry_k(SsmScanArgs a, int chunks) {
  const int64_t per_chunk = (int64_t)a.d_inner * a.d_state;
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= (int64_t)a.seqs * per_chunk) return;
  int seq = static_cast<int>(i / per_chunk);
  int64_t sidx = i % per_chunk;
  int len = a.seq_start[seq + 1] - a.seq_start[seq];
  int nch = (len + a.chunk - 1) / a.chunk;
  float* st = a.states.p + (int64_t)a.state_slot[seq] * a.states.stride + sidx;
  float* hend = a.scratch;
  float* dec = a.scratch + (int64_t)a.seqs * chunks * per_chunk;
  float h = *st;
  for (int c = 0; c < nch; ++c) {
    int64_t ci = ((int64_t)seq * chunks + c) * per_chunk + sidx;
    float local = hend[ci];
    hend[ci] = h;
    h = expf(dec[ci]) * h + local;
  }
  *st = h;
}

}  // namespace

int64_t ssm_scan_scratch_floats(int seqs, int max_len, int chunk, int d_inner, int d_state) {
  int chunks = (max_len + chunk - 1) / chunk;
  return 2LL * seqs * chunks * d_inner * d_state;
}

void ssm_scan(const SsmScanArgs& a, cudaStream_t s) {
  if (a.seqs <= 0 || a.max_len <= 0) return;
  if (a.d_state <= 0 || a.d_state > 32 || (a.d_state & (a.d_state - 1)) != 0)
    throw std::invalid_argument("ssm_scan: d_state must be a power of two <= 32");
  if (a.seqs > 65535) throw std::invalid_argument("ssm_scan: too many sequences");
  const int per_block = kThreads / a.d_state;
  const int dblocks = (a.d_inner + per_block - 1) / per_block;
  if (a.max_len <= a.chunk || a.scratch == nullptr) {
    SsmScanArgs one = a;
    one.chunk = a.max_len;  // the whole run as one chunk
    scan_k<0><<<dim3(dblocks, 1, a.seqs), kThreads, 0, s>>>(one, 1);
    ISC_LAUNCH();
    return;
  }
  const int chunks = (a.max_len + a.chunk - 1) / a.chunk;
  scan_k<1><<<dim3(dblocks, chunks, a.seqs), kThreads, 0, s>>>(a, chunks);
  ISC_LAUNCH();
  int64_t n = (int64_t)a.seqs * a.d_inner * a.d_state;
  carry_k<<<static_cast<int>((n + 255) / 256), 256, 0, s>>>(a, chunks);
  ISC_LAUNCH();
  scan_k<3><<<dim3(dblocks, chunks, a.seqs), kThreads, 0, s>>>(a, chunks);
  ISC_LAUNCH();
}

}  // namespace inferscope::engine::cuda
