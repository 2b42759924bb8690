// fp4_gemm: y = x W^T (+ bias) for 4-bit weights (NVFP4, MXFP4, NF4, bnb_fp4) and bf16
// activations at batches above kFusedMaxBatch, on Hopper's warpgroup MMA (wgmma), reading the
// packed codes and scales directly: no dequantized weight is written anywhere.
//
// Shape of the kernel (docs/fp4.md, "Above 16 batch rows"):
//  - A tile is 128 weight rows x BN (16, 32, 64, 128 or 256) batch rows of y. In a block,
//    warpgroup 0 is the producer: one thread issues tensor memory accelerator (TMA) copies of
//    each 128-wide k step (x: two 64-k boxes of BN rows in the 128-byte swizzle; codes: 128
//    rows x 64 bytes; scales: 128 rows x 16 bytes, 2 steps of NVFP4, NF4 or bnb_fp4, 4 of
//    MXFP4) into a ring of shared-memory stages (3 to 8, as many as fit), signalled by
//    mbarriers. Warpgroups 1 and 2 consume 64 weight rows each. Narrow tiles (BN 16 to 64) can
//    run two blocks an SM.
//  - The weight is wgmma's A operand, decoded into registers with the same bit operations as
//    the mma.sync kernels (fp4_bit_decode.cuh): the E2M1 bits placed in a bf16 read as the value
//    times 2^-126. NVFP4: multiplied by the block scale times 2^119, so every A element is the
//    exact weight times 2^-7; the 2^7 and the tensor scale are given back in float32 at the
//    end. MXFP4: times 2^126, then the E8M0 scale (2^-127 .. 2^127, all exact in bf16), so A
//    is the exact weight. NF4 and bnb_fp4: pairs of table values from a 256-entry table in
//    shared memory, times the absmax; both rounded to bf16, as in the fused kernels.
//  - x is wgmma's B operand straight from shared memory. A lane's 16 code bytes of a step
//    decode into its fragment in an order that is not k order, so x is first permuted once per
//    call into that order, padded with zero rows to whole tiles (permute_x_kernel), and the
//    TMA reads the permuted copy.
//  - While one half-step's wgmma group runs, the consumer decodes the next half-step's A
//    fragments into the other register set: the tensor cores and the decode overlap.
//  - Blocks take whole tiles in waves; the tiles left over (or all of them, when there are
//    too few for the SMs) can be shared step by step (stream-K): each block leaves the sums of
//    a tile it did not finish in a float32 slot, and the last block to finish its part adds
//    those slots to its own sums in block order, so the result does not depend on timing; it
//    waits only for blocks already past their part, so it cannot deadlock. A second warp of
//    warpgroup 0 publishes each slot, so that the consumers do not wait for their stores.
//  - y is written in 8-byte words (4 weight rows of a batch row), regrouped by two register
//    exchanges between lanes, where n % 4 == 0 and y is 8-byte aligned.
//  - The copies of x carry an L2 evict-last hint and those of the weight evict-first; the
//    kernel is launched as the permute kernel's programmatic dependent, so that its prologue
//    overlaps the permute.
// Built for sm_90a only (wgmma and setmaxnreg are Hopper-specific); fp4_gemm_supported
// refuses any other device.
#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "backends/cuda/copy_engine.h"
#include "backends/cuda/fp4_bit_decode.cuh"
#include "backends/cuda/fp4_kernels.h"
#include "common/status_macros.h"

namespace vb::backends::cuda::fp4 {
namespace {

constexpr int kGemmRows = 128;     // weight rows a tile: two consumer warpgroups x 64
constexpr int kGemmThreads = 384;  // producer warpgroup + two consumer warpgroups
constexpr int kConsumerThreads = 256;
constexpr int kCodeTileBytes = kGemmRows * 64;  // codes of one 128-wide k step
// Scales of the step pair holding the step: a TMA box row is at least 16 bytes. Every stage
// gets its own copy, so a block's run of steps may start on either step of a pair.
constexpr int kScaleTileBytes = kGemmRows * 16;

// What a block may hold at kPerSm blocks an SM (1, or 2 for the narrow tiles, where two
// blocks measured faster: docs/fp4.md).
//  - Registers: the kernel is built for 64 Ki / (384 kPerSm) registers a thread, rounded down
//    to 8 (168, 80); setmaxnreg moves part of the producer warpgroup's share to the consumers
//    within the block's total.
//  - Shared memory: Hopper's 228 KiB an SM, less 1 KiB the system keeps per block, and at
//    most 227 KiB a block.
template <int kPerSm>
struct GemmBudget {
  static constexpr int kBuiltRegisters = 65536 / (kGemmThreads * kPerSm) / 8 * 8;
  static constexpr int kProducerRegisters = kPerSm == 1 ? 40 : 32;
  static constexpr int kConsumerRegisters = kPerSm == 1 ? 232 : 104;
  static_assert(128 * kProducerRegisters + kConsumerThreads * kConsumerRegisters <=
                    kGemmThreads * kBuiltRegisters,
                "setmaxnreg would ask for more registers than the block has");
  static constexpr int kMaxSmemBytes = kPerSm == 1 ? 227 * 1024 : 228 * 1024 / kPerSm - 1024;
};

template <int kBn, int kPerSm>
struct GemmLayout {
  static constexpr int kMaxSmemBytes = GemmBudget<kPerSm>::kMaxSmemBytes;
  static constexpr int kXBoxBytes = kBn * 64 * 2;  // BN rows x 64 k of bf16: 128-byte rows
  static constexpr int kCodeOffset = 2 * kXBoxBytes;
  static constexpr int kScaleOffset = kCodeOffset + kCodeTileBytes;
  static constexpr int kStageBytes = kScaleOffset + kScaleTileBytes;
  // NF4 and bnb_fp4 decode through a table of 256 bf16 pairs. Every build keeps room for it:
  // it costs no stage at any tile.
  static constexpr int kTableBytes = 256 * 4;
  // As many stages as fit, at most 8 (one block an SM: 3 at BN 256, 5 at 128, 8 at 64; two:
  // 4 at 64, 6 at 32, 7 at 16), after the barriers, the table and 1024 bytes to realign the
  // dynamic shared memory to the swizzle's 1024-byte atom.
  static constexpr int kFit = (kMaxSmemBytes - 1024 - 16 * 8 - 16 - kTableBytes) / kStageBytes;
  static constexpr int kStages = kFit < 8 ? kFit : 8;
  static constexpr int kBarrierOffset = kStages * kStageBytes;
  // Barriers, two ints (is the block last to finish its first / last shared segment), the
  // table, realignment.
  static constexpr int kTableOffset = kBarrierOffset + 16 * kStages + 16;
  static constexpr int kSmemBytes = kTableOffset + kTableBytes + 1024;
  static_assert(kStages >= 2 && kSmemBytes <= kMaxSmemBytes, "stages do not fit");
};

// What a launch computes. A tile is 128 weight rows x BN batch rows, `steps` 128-wide k steps
// long. Tiles are numbered batch block first, so that the blocks running at once that read the
// same weight rows do so together (the weight comes from DRAM once; x, a few MiB, stays in the
// L2 anyway).
struct GemmParams {
  float tensor_scale;
  int n, k, batch;
  int batch_blocks;           // BN-row blocks of the (padded) batch
  int tiles;                  // tiles * (k / 128) < 2^31: fp4_gemm_supported
  int l2_hints;               // 1: x evict-last, the weight evict-first in the L2
  int word_stores;            // 1: y in 8-byte words (n % 4 == 0, y 8-byte aligned)
  const __nv_bfloat16* bias;  // n values or null
  __nv_bfloat16* y;           // [batch, n]
  float* partials;            // per block, 2 slots of 256 threads x BN / 2 floats (shared tiles)
  int* tile_counts;           // per tile: tickets taken, slots written (zeroed before)
};

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbarrier_expect_bytes(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}
// L2 eviction priority for a TMA copy: `last` for data many blocks read, else `first`; or
// the normal priority for both.
__device__ __forceinline__ uint64_t l2_policy(bool hints, bool last) {
  uint64_t policy;
  if (!hints) {
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(policy));
  } else if (last) {
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
  } else {
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  }
  return policy;
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int inner, int outer, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(inner), "r"(outer), "l"(policy)
      : "memory");
}
// wgmma shared-memory descriptor of a K-major tile in the 128-byte swizzle: rows of 128 bytes
// (64 k), 8-row atoms of 1024 bytes (SBO), LBO unused; a 16-k slice starts 32 bytes later.
__device__ __forceinline__ uint64_t swizzled_descriptor(uint32_t smem_address) {
  return uint64_t((smem_address >> 4) & 0x3FFF) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// wgmma reads its A registers and writes its accumulators after the instruction issues, which
// the compiler does not see: these keep the values (and so their registers) live and in place
// up to the point where a wgmma_wait has made them safe to touch.
template <int N>
__device__ __forceinline__ void keep_registers(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void keep_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The accumulator operands of a wgmma, 32 at a time: "+f"(d[i]) .. "+f"(d[i + 31]).
#define VB_WGMMA_D4(i) "+f"(d[i]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3])
#define VB_WGMMA_D16(i) \
  VB_WGMMA_D4(i), VB_WGMMA_D4((i) + 4), VB_WGMMA_D4((i) + 8), VB_WGMMA_D4((i) + 12)
#define VB_WGMMA_D32(i) VB_WGMMA_D16(i), VB_WGMMA_D16((i) + 16)

// D[64 x BN] += A[64 x 16] (registers: a0..a3) * B[16 x BN] (shared memory, `descriptor`).
template <int kBn>
struct Wgmma;

template <>
struct Wgmma<16> {
  static __device__ __forceinline__ void mma(float (&d)[8], const uint32_t* a,
                                             uint64_t descriptor) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"  // accumulate into d
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, p, 1, 1, 0;\n}\n"
        : VB_WGMMA_D4(0), VB_WGMMA_D4(4)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descriptor));
  }
};

template <>
struct Wgmma<32> {
  static __device__ __forceinline__ void mma(float (&d)[16], const uint32_t* a,
                                             uint64_t descriptor) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"  // accumulate into d
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, "
        "1, 0;\n}\n"
        : VB_WGMMA_D16(0)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descriptor));
  }
};

template <>
struct Wgmma<64> {
  static __device__ __forceinline__ void mma(float (&d)[32], const uint32_t* a,
                                             uint64_t descriptor) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"  // accumulate into d
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,"
        "%24,%25,%26,%27,%28,%29,%30,%31}, "
        "{%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
        : VB_WGMMA_D32(0)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descriptor));
  }
};

template <>
struct Wgmma<128> {
  static __device__ __forceinline__ void mma(float (&d)[64], const uint32_t* a,
                                             uint64_t descriptor) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"  // accumulate into d
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,"
        "%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,"
        "%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
        "{%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"
        : VB_WGMMA_D32(0), VB_WGMMA_D32(32)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descriptor));
  }
};

template <>
struct Wgmma<256> {
  static __device__ __forceinline__ void mma(float (&d)[128], const uint32_t* a,
                                             uint64_t descriptor) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 1, 0;\n"  // accumulate into d
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,"
        "%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,"
        "%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,"
        "%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,"
        "%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,"
        "%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,"
        "%126,%127}, "
        "{%128,%129,%130,%131}, %132, p, 1, 1, 0;\n}\n"
        : VB_WGMMA_D32(0), VB_WGMMA_D32(32), VB_WGMMA_D32(64), VB_WGMMA_D32(96)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descriptor));
  }
};

// Two floats rounded to bf16 in one word, `low` in the low half (the lower column of an MMA
// fragment).
__device__ __forceinline__ uint32_t bf16x2_bits(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// 2^126 in both halves of a bf16 pair.
constexpr uint32_t kBf16x2TwoTo126 = 0x7E807E80u;

// An E8M0 byte as a bf16 pair holding 2^(e - 127) in both halves: exact for every e (2^-127
// is a bf16 subnormal), and 0xFF is NaN.
__device__ __forceinline__ uint32_t e8m0_to_scale_pair(uint32_t e) {
  const uint32_t bits = e == 0 ? 0x0040u : e == 0xFFu ? 0x7FC0u : e << 7;
  return bits | (bits << 16);
}

// Position within a 128-wide step of the lane-order index (slice s of 16, element e of 16):
// lane t's words w = s / 2 and MMA u = s % 2 hold nibbles (3 - 2u, 7 - 2u) and (2 - 2u, 6 - 2u)
// of byte-group 8 w of its 32 k (see e2m1_word_bits), in the A fragment's column order.
__device__ __forceinline__ int step_k_of(int s, int e) {
  const int w = s / 2, u = s % 2, t = (e % 8) / 2, odd = e % 2, high = e / 8;
  const int nibble =
      high == 0 ? (odd == 0 ? 3 - 2 * u : 7 - 2 * u) : (odd == 0 ? 2 - 2 * u : 6 - 2 * u);
  return 32 * t + 8 * w + nibble;
}

// xp[b][128 step + 16 s + e] = x[b][128 step + step_k_of(s, e)] for b < batch, and 0 for the
// rows up to `padded_batch` (whole batch tiles: the TMA never reads past the end of xp, which
// measured slower than reading zeros). A thread writes 8 outputs.
// It also zeroes the tiles' two counts (one launch instead of a memset and a kernel), and
// lets the GEMM kernel, launched as its programmatic dependent, start its prologue meanwhile.
__global__ void permute_x_kernel(const uint16_t* __restrict__ x, uint16_t* __restrict__ xp,
                                 int64_t batch, int64_t padded_batch, int k, int* tile_counts,
                                 int64_t counts) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
  const int64_t thread = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  for (int64_t c = thread; c < counts; c += int64_t{gridDim.x} * blockDim.x) tile_counts[c] = 0;
  const int64_t i = thread * 8;
  if (i >= padded_batch * k) return;
  const int64_t row = i / k;
  uint32_t packed[4] = {0, 0, 0, 0};
  if (row < batch) {
    const int kp = static_cast<int>(i % k);
    const int step = kp / 128, s = (kp % 128) / 16, e0 = kp % 16;
    const uint16_t* from = x + row * k + 128 * step;
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      packed[e / 2] =
          uint32_t{from[step_k_of(s, e0 + e)]} | (uint32_t{from[step_k_of(s, e0 + e + 1)]} << 16);
    }
  }
  *reinterpret_cast<uint4*>(xp + i) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

// The tiles left after the whole waves (one tile a block) are shared by all blocks step by
// step (stream-K): block `block` of `blocks` owns steps [work * block / blocks,
// work * (block + 1) / blocks) of those tiles' tile-major run of steps, so the last wave does
// not run part-empty.
__device__ __forceinline__ int first_step_of(int block, int blocks, int work) {
  return static_cast<int>(int64_t{work} * block / blocks);
}

// The block whose steps include `step`.
__device__ __forceinline__ int owner_of(int step, int blocks, int work) {
  int block = static_cast<int>(int64_t{step} * blocks / work);
  while (block + 1 < blocks && first_step_of(block + 1, blocks, work) <= step) ++block;
  while (block > 0 && first_step_of(block, blocks, work) > step) --block;
  return block;
}

// The tile counts' two sides: a writer's release after its slot stores, the last block's
// acquire before it reads the slots.
__device__ __forceinline__ void red_release_add(int* counter, int value) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(counter), "r"(value) : "memory");
}
__device__ __forceinline__ int load_acquire(const int* counter) {
  int value;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(counter) : "memory");
  return value;
}

__device__ __forceinline__ void consumer_barrier() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerThreads) : "memory");
}
// Named barrier 2: the consumers (arrive, and go on) and the bookkeeper warp (waits).
__device__ __forceinline__ void slot_barrier_arrive() {
  asm volatile("bar.arrive 2, %0;\n" ::"n"(kConsumerThreads + 32) : "memory");
}
__device__ __forceinline__ void slot_barrier_sync() {
  asm volatile("bar.sync 2, %0;\n" ::"n"(kConsumerThreads + 32) : "memory");
}

template <int kBn, int kPerSm, Format kFormat>
__global__ void __launch_bounds__(kGemmThreads, kPerSm)
    fp4_gemm_kernel(const __grid_constant__ CUtensorMap x_map,
                    const __grid_constant__ CUtensorMap code_map,
                    const __grid_constant__ CUtensorMap scale_map, const GemmParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Layout = GemmLayout<kBn, kPerSm>;
  using Budget = GemmBudget<kPerSm>;
  constexpr bool kMx = kFormat == Format::kMxfp4;
  constexpr bool kTable = kFormat == Format::kNf4 || kFormat == Format::kBnbFp4;
  // A stage's scale box is 16 bytes of each row: 2 steps of NVFP4 scales (a byte for 16 k) or
  // of NF4 / bnb_fp4 scales (a float32 for 64 k), 4 of MXFP4 (a byte for 32 k).
  constexpr int kStepsPerScaleBox = kMx ? 4 : 2;
  constexpr int kStages = Layout::kStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t full = base + Layout::kBarrierOffset;  // stage s: full + 8 s
  const uint32_t empty = full + 8 * kStages;
  const int steps = p.k / 128;
  // Tiles [0, whole) in waves of one tile a block (tile blockIdx.x + w gridDim.x), then the
  // rest shared: `work` steps, this block's share [my_first, my_end).
  const int whole = p.tiles / gridDim.x * gridDim.x;
  // < 2^31 (fp4_gemm_supported), and 0 or at least one step a block (plan_gemm).
  const int work = (p.tiles - whole) * steps;
  const int my_first = first_step_of(blockIdx.x, gridDim.x, work);
  const int my_end = first_step_of(blockIdx.x + 1, gridDim.x, work);
  const int warpgroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(full + 8 * s, 1);
      mbarrier_init(empty + 8 * s, 8);  // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  }
  __syncthreads();
  // Launched as the permute kernel's programmatic dependent: the prologue above may run before
  // that kernel ends; its x and zeroed tile counts are only complete and visible after this.
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  // The block's work as segments, steps [s0, s1) of tile `tile`: its whole tiles, then one
  // segment per shared tile its share touches. `next` is where the walk stands.
  struct Walk {
    int whole_tile, at;
  };
  auto next_segment = [&](Walk& w, int& tile, int& s0, int& s1) {
    if (w.whole_tile < whole) {
      tile = w.whole_tile;
      w.whole_tile += gridDim.x;
      s0 = 0;
      s1 = steps;
      return true;
    }
    if (w.at >= my_end) return false;
    tile = whole + w.at / steps;
    s0 = w.at % steps;
    s1 = min(steps, s0 + (my_end - w.at));
    w.at += s1 - s0;
    return true;
  };
  auto row_block_of = [&](int tile) { return (tile / p.batch_blocks) * kGemmRows; };
  auto batch_block_of = [&](int tile) { return (tile % p.batch_blocks) * kBn; };

  // Is the block the last to finish its first (0) / last (1) shared segment: set by consumer
  // 0, read by the other consumers and the bookkeeper warp. Each is written once a launch.
  int* last_flags = reinterpret_cast<int*>(smem + Layout::kBarrierOffset + 16 * kStages);

  if (warpgroup == 0) {  // the producer: one thread issues every copy
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Budget::kProducerRegisters));
    if (threadIdx.x / 32 == 1) {
      // The bookkeeper warp. Where the block is not the last to finish a shared segment, the
      // consumers store their sums in a slot, arrive at a named barrier and go on with the
      // next segment; this warp waits there and publishes the slot with one release (the
      // barrier orders every consumer's stores before it, as in CUTLASS's generic barrier),
      // so the consumers do not wait for their stores to drain (a non-last block's bookkeeping
      // measured 3.8 us with this warp, 4.3 us without, in two runs under a per-block timer).
      // A block has at most two shared segments (its shared run's first and last), so the
      // barrier is never arrived at twice before this warp has waited on it.
      Walk walk{static_cast<int>(blockIdx.x), my_first};
      int tile, s0, s1;
      while (next_segment(walk, tile, s0, s1)) {
        if (s0 == 0 && s1 == steps) continue;
        slot_barrier_sync();
        if (threadIdx.x % 32 == 0 && last_flags[s0 > 0 ? 0 : 1] == 0) {
          red_release_add(p.tile_counts + 2 * tile + 1, 1);
        }
      }
      return;
    }
    if (threadIdx.x != 0) return;
    const uint64_t x_policy = l2_policy(p.l2_hints != 0, true);
    const uint64_t weight_policy = l2_policy(p.l2_hints != 0, false);
    int it = 0;  // the step count: stage it % kStages, its (it / kStages)-th use
    Walk walk{static_cast<int>(blockIdx.x), my_first};
    int tile, s0, s1;
    while (next_segment(walk, tile, s0, s1)) {
      const int row_block = row_block_of(tile), batch_block = batch_block_of(tile);
      for (int j = s0; j < s1; ++j, ++it) {
        const int s = it % kStages;
        // The stage's previous occupant has been released by every consumer warp.
        if (it >= kStages) mbarrier_wait(empty + 8 * s, (it / kStages - 1) & 1);
        mbarrier_expect_bytes(full + 8 * s, Layout::kStageBytes);
        const uint32_t stage = base + s * Layout::kStageBytes;
        tma_load_2d(stage, &x_map, full + 8 * s, 128 * j, batch_block, x_policy);
        tma_load_2d(stage + Layout::kXBoxBytes, &x_map, full + 8 * s, 128 * j + 64, batch_block,
                    x_policy);
        tma_load_2d(stage + Layout::kCodeOffset, &code_map, full + 8 * s, 64 * j, row_block,
                    weight_policy);
        tma_load_2d(stage + Layout::kScaleOffset, &scale_map, full + 8 * s,
                    16 * (j / kStepsPerScaleBox), row_block, weight_policy);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Budget::kConsumerRegisters));
  const int consumer = threadIdx.x - 128;  // 0..255
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int local_row = 64 * (warpgroup - 1) + 16 * warp + g;  // and local_row + 8
  uint4 codes[2];      // this lane's 16 code bytes of the step, rows local_row and + 8
  uint32_t scales[2];  // and their two block scales
  auto read_step = [&](int it, int j) {
    const int s = it % kStages;
    mbarrier_wait(full + 8 * s, (it / kStages) & 1);
    const uint8_t* stage = smem + s * Layout::kStageBytes;
    const uint8_t* code_tile = stage + Layout::kCodeOffset + 16 * t;
    // A lane's 32 k of a row are two NVFP4 blocks (two E4M3 bytes), one MXFP4 block (one
    // E8M0 byte) or half an NF4 / bnb_fp4 block (its float32 absmax).
    const uint8_t* scale_tile = stage + Layout::kScaleOffset +
                                (16 / kStepsPerScaleBox) * (j % kStepsPerScaleBox) +
                                (kMx      ? t
                                 : kTable ? 4 * (t / 2)
                                          : 2 * t);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      codes[h] = *reinterpret_cast<const uint4*>(code_tile + (local_row + 8 * h) * 64);
      const uint8_t* row_scales = scale_tile + (local_row + 8 * h) * 16;
      scales[h] = kMx      ? *row_scales
                  : kTable ? *reinterpret_cast<const uint32_t*>(row_scales)
                           : *reinterpret_cast<const uint16_t*>(row_scales);
    }
  };
  // The stage's x has been read by this warp's wgmmas: the producer may refill it.
  auto release = [&](int it) {
    if (lane == 0) mbarrier_arrive(empty + 8 * (it % kStages));
  };
  // The E2M1 bits as bf16 read as the value times 2^-126. NVFP4's scales carry 2^119 (every A
  // element is the weight times 2^-7, given back at the end); an E8M0 scale spans 2^-127 ..
  // 2^127, so MXFP4 elements are first made exact (times 2^126) and A is the weight itself.
  auto element = [](uint32_t bits) { return kMx ? mul_bf16x2(bits, kBf16x2TwoTo126) : bits; };
  // NF4 and bnb_fp4: entry lo | hi << 4 holds the table values of codes lo (low half) and hi
  // (high half), rounded to bf16, as the fused kernels round them.
  const uint32_t* pair_table = reinterpret_cast<const uint32_t*>(smem + Layout::kTableOffset);
  if constexpr (kTable) {
    reinterpret_cast<uint32_t*>(smem + Layout::kTableOffset)[consumer] =
        bf16x2_bits(backends::fp4::element_to_float(kFormat, consumer & 15),
                    backends::fp4::element_to_float(kFormat, consumer >> 4));
    consumer_barrier();
  }
  // The four bf16 pairs of code word q, in e2m1_word_bits' order (pairs[i]: nibbles 3 - i
  // and 7 - i).
  auto word_pairs = [&](uint32_t q, uint32_t(&pairs)[4]) {
    if constexpr (kTable) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        pairs[i] = pair_table[((q >> (12 - 4 * i)) & 0xFu) | ((q >> (24 - 4 * i)) & 0xF0u)];
      }
    } else {
      e2m1_word_bits(q, pairs);
    }
  };
  // A fragments of half `half` of the step (4 slices of 16 k): words 2 half, 2 half + 1.
  auto decode_half = [&](int half, uint32_t(&a)[16]) {
    uint32_t scale[2];  // rows local_row, local_row + 8: this half's block scale
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if constexpr (kMx) {
        scale[h] = e8m0_to_scale_pair(scales[h]);
      } else if constexpr (kTable) {
        const float absmax = __uint_as_float(scales[h]);
        scale[h] = bf16x2_bits(absmax, absmax);
      } else {
        uint32_t pair[2];  // half 0's and half 1's scale
        e4m3_pair_to_scales(scales[h], pair[0], pair[1]);
        scale[h] = pair[half];
      }
    }
#pragma unroll
    for (int ww = 0; ww < 2; ++ww) {
      uint32_t lo[4], hi[4];  // rows local_row, local_row + 8
      word_pairs((&codes[0].x)[2 * half + ww], lo);
      word_pairs((&codes[1].x)[2 * half + ww], hi);
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        uint32_t* f = a + 4 * (2 * ww + u);
        f[0] = mul_bf16x2(element(lo[2 * u]), scale[0]);
        f[1] = mul_bf16x2(element(hi[2 * u]), scale[1]);
        f[2] = mul_bf16x2(element(lo[2 * u + 1]), scale[0]);
        f[3] = mul_bf16x2(element(hi[2 * u + 1]), scale[1]);
      }
    }
  };
  // Block `block`'s sums of an unfinished tile (which 0: the block's first segment, 1: its
  // last): float4 j of every thread, then float4 j + 1, so that a warp's store or load of one
  // float4 each is 512 contiguous bytes (a thread's own 512 bytes in a row took ~11 us a
  // block to write, measured).
  auto partial_slot = [&](int block, int which) {
    return reinterpret_cast<float4*>(p.partials +
                                     (int64_t{block} * 2 + which) * kConsumerThreads * (kBn / 2)) +
           consumer;
  };

  float d[kBn / 2];
  uint32_t a0[16], a1[16];  // the step's first and second half
  int it = 0;
  Walk walk{static_cast<int>(blockIdx.x), my_first};
  int tile, s0, s1;
  while (next_segment(walk, tile, s0, s1)) {
#pragma unroll
    for (int i = 0; i < kBn / 2; ++i) d[i] = 0.0f;
    keep_registers(d);
    const bool shared_tile = s0 > 0 || s1 < steps;
    int* tickets = p.tile_counts + 2 * tile;  // and tickets + 1: slots written
    int ticket = 0;
    read_step(it, s0);
    decode_half(0, a0);
    for (int j = s0; j < s1; ++j, ++it) {
      // A shared tile's ticket is taken as its last step starts, so that the atomic's round
      // trip overlaps the step.
      if (shared_tile && consumer == 0 && j + 1 == s1) ticket = atomicAdd(tickets, 1);
      const uint32_t x_stage = base + (it % kStages) * Layout::kStageBytes;
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        Wgmma<kBn>::mma(d, a0 + 4 * s, swizzled_descriptor(x_stage + 32 * s));
      }
      wgmma_commit();
      keep_registers(d);
      wgmma_wait<1>();  // the previous step's second half is done: release its stage
      keep_registers(a1);
      if (j > s0) release(it - 1);
      decode_half(1, a1);
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        Wgmma<kBn>::mma(d, a1 + 4 * s, swizzled_descriptor(x_stage + Layout::kXBoxBytes + 32 * s));
      }
      wgmma_commit();
      keep_registers(d);
      wgmma_wait<1>();  // this step's first half is done: a0 may change
      keep_registers(a0);
      if (j + 1 < s1) {
        read_step(it + 1, j + 1);
        decode_half(0, a0);
      }
    }
    wgmma_wait<0>();
    keep_registers(d);
    keep_registers(a0);
    keep_registers(a1);
    release(it - 1);

    if (shared_tile) {
      // A tile shared with other blocks (a block's first segment may start inside a tile, its
      // last may end inside one). Each block takes a ticket as it starts its segment's last
      // step; the last ticket adds the other blocks' sums to its own registers in block order and
      // writes y, and every other block leaves its sums in a slot. The last block waits only for
      // blocks that took a ticket before it: they are running and wait for nothing, so
      // blocks that are not resident at the same time (other kernels on the GPU) cannot
      // deadlock, and the sum order does not depend on who arrives last.
      const int tile_first = (tile - whole) * steps, tile_last = tile_first + steps - 1;
      const int first = owner_of(tile_first, gridDim.x, work);
      const int final_block = owner_of(tile_last, gridDim.x, work);
      const int which = s0 > 0 ? 0 : 1;
      if (consumer == 0) {
        const bool last = ticket == final_block - first;
        if (last) {
          while (load_acquire(tickets + 1) != final_block - first) {
          }
        }
        last_flags[which] = last ? 1 : 0;
      }
      consumer_barrier();  // the flag, and for the last block the other slots, are visible
      const bool last = last_flags[which] != 0;
      if (!last) {
        float4* slot = partial_slot(blockIdx.x, which);
#pragma unroll
        for (int i = 0; i < kBn / 2; i += 4) {
          __stcg(slot + i / 4 * kConsumerThreads, make_float4(d[i], d[i + 1], d[i + 2], d[i + 3]));
        }
        slot_barrier_arrive();  // the bookkeeper warp publishes the slot
        continue;
      }
      slot_barrier_arrive();  // the bookkeeper warp reads the flag: nothing to publish
      // The sum is ((slot[first] + slot[first + 1]) + ...). Addition commutes, so when this
      // block is first or second its own sums start the sum from registers; further along,
      // they go through its slot like the others' (its own stores, read back by the same
      // threads).
      const bool own_in_registers = blockIdx.x - first < 2;
      if (!own_in_registers) {
        float4* slot = partial_slot(blockIdx.x, which);
#pragma unroll
        for (int i = 0; i < kBn / 2; i += 4) {
          __stcg(slot + i / 4 * kConsumerThreads, make_float4(d[i], d[i + 1], d[i + 2], d[i + 3]));
          d[i] = d[i + 1] = d[i + 2] = d[i + 3] = 0.0f;
        }
      }
      for (int block = first; block <= final_block; ++block) {
        if (block == static_cast<int>(blockIdx.x) && own_in_registers) continue;
        const float4* other =
            partial_slot(block, first_step_of(block, gridDim.x, work) > tile_first ? 0 : 1);
#pragma unroll
        for (int i = 0; i < kBn / 2; i += 4) {
          const float4 v = __ldcg(other + i / 4 * kConsumerThreads);
          d[i] += v.x;
          d[i + 1] += v.y;
          d[i + 2] += v.z;
          d[i + 3] += v.w;
        }
      }
    }
    // d[4 c + 2 h + e]: weight row local_row + 8 h, batch row 8 c + 2 t + e of the tile. So a
    // lane holds 2 batch rows x 2 weight rows of every 8 batch rows, and y is batch-row major:
    // stored as they are, a warp's store of one output each touches 4 pieces of 16 bytes (the
    // epilogue took ~5 us a tile when each output also computed its address, ~3 us through a
    // shared-memory transpose whose rounds each waited on the last).
    const float out_scale = kMx || kTable ? 1.0f : p.tensor_scale * kE2m1OutputBias;
    float b[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row_block_of(tile) + local_row + 8 * h;
      b[h] = p.bias == nullptr || row >= p.n ? 0.0f : __bfloat162float(p.bias[row]);
    }
    auto output = [&](int c, int h, int e) { return d[4 * c + 2 * h + e] * out_scale + b[h]; };
    const int64_t n = p.n;
    if (p.word_stores != 0) {
      // Two exchanges of bf16 pairs in registers, for every 8 batch rows, give each lane 4
      // consecutive weight rows of one batch row, stored as one 8-byte word; the 4 lanes of
      // a batch row cover the warp's 16 rows, so a warp's store is 8 whole 32-byte sectors:
      //  1. with lane ^ 4 (weight row g ^ 1): a lane of even g ends with rows g, g + 1 of
      //     batch row 2 t, one of odd g with rows g - 1, g of batch row 2 t + 1 (for h = 0 and
      //     h = 1);
      //  2. with lane ^ 8 (weight row g ^ 2): where g & 2 is 0 the lane ends with the h = 0
      //     pairs, rows 4 (g / 4) .. + 3; else with the h = 1 pairs, 8 rows further.
      const bool odd = (g & 1) != 0, upper = (g & 2) != 0;
      const int row =
          row_block_of(tile) + 64 * (warpgroup - 1) + 16 * warp + 4 * (g / 4) + (upper ? 8 : 0);
      const int batch_row = batch_block_of(tile) + 2 * t + (odd ? 1 : 0);
      const bool in_n = row < p.n;                      // n % 4 == 0: all 4 rows or none
      const int batch_rows_left = p.batch - batch_row;  // batch row + 8 c exists: 8 c < this
      uint2* out = reinterpret_cast<uint2*>(p.y + batch_row * n + row);
#pragma unroll
      for (int c = 0; c < kBn / 8; ++c, out += 2 * n) {
        // Low half h = 0, high half h = 1: the batch row this lane keeps, and the other
        // (selects, not an index: d must stay in registers).
        const uint32_t batch_even = bf16x2_bits(output(c, 0, 0), output(c, 1, 0));
        const uint32_t batch_odd = bf16x2_bits(output(c, 0, 1), output(c, 1, 1));
        const uint32_t keep = odd ? batch_odd : batch_even, give = odd ? batch_even : batch_odd;
        const uint32_t got = __shfl_xor_sync(0xFFFFFFFFu, give, 4);
        const uint32_t low_row = odd ? got : keep, high_row = odd ? keep : got;
        const uint32_t pair0 = __byte_perm(low_row, high_row, 0x5410);  // h = 0
        const uint32_t pair1 = __byte_perm(low_row, high_row, 0x7632);  // h = 1
        const uint32_t other = __shfl_xor_sync(0xFFFFFFFFu, upper ? pair0 : pair1, 8);
        if (in_n && 8 * c < batch_rows_left) {
          *out = upper ? make_uint2(other, pair1) : make_uint2(pair0, other);
        }
      }
      continue;
    }
    // One bf16 a store (n % 4 != 0, or y not 8-byte aligned). Addresses advance by a pointer
    // step and the bounds are two predicates, so that each output costs a multiply-add, a
    // conversion and a store.
    const int row = row_block_of(tile) + local_row;  // and row + 8
    bool row_ok[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) row_ok[h] = row + 8 * h < p.n;
    const int first_batch_row = batch_block_of(tile) + 2 * t;
    __nv_bfloat16* out = p.y + first_batch_row * n + row;
    const int rows_left = p.batch - first_batch_row;  // batch row 8 c + e exists: < this
#pragma unroll
    for (int c = 0; c < kBn / 8; ++c, out += 8 * n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (row_ok[h] && 8 * c + e < rows_left) {
            out[e * n + 8 * h] = __float2bfloat16(output(c, h, e));
          }
        }
      }
    }
  }
#else
  __trap();  // built for sm_90a only; fp4_gemm_supported keeps other devices away
#endif
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver the runtime loaded (no link to libcuda).
absl::StatusOr<EncodeTiled> encode_tiled() {
  static std::once_flag once;
  static EncodeTiled function = nullptr;
  static cudaError_t error = cudaSuccess;
  std::call_once(once, [] {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    error = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000,
                                             cudaEnableDefault, &found);
    if (error == cudaSuccess && found == cudaDriverEntryPointSuccess) {
      function = reinterpret_cast<EncodeTiled>(entry);
    }
  });
  VB_RETURN_IF_ERROR(cuda_status(error, "cudaGetDriverEntryPointByVersion"));
  if (function == nullptr) {
    return absl::FailedPreconditionError(
        "fp4_gemm: the CUDA driver has no cuTensorMapEncodeTiled (needs CUDA 12 or later)");
  }
  return function;
}

// A 2-D tensor map of `outer` rows of `inner` elements, `row_bytes` apart, read in boxes of
// box_inner x box_outer; out-of-range rows and columns read as zero.
absl::StatusOr<CUtensorMap> tensor_map(CUtensorMapDataType type, const void* address,
                                       uint64_t inner, uint64_t outer, uint64_t row_bytes,
                                       uint32_t box_inner, uint32_t box_outer,
                                       CUtensorMapSwizzle swizzle, const char* what) {
  VB_ASSIGN_OR_RETURN(const EncodeTiled encode, encode_tiled());
  CUtensorMap map;
  const cuuint64_t dims[2] = {inner, outer};
  const cuuint64_t strides[1] = {row_bytes};
  const cuuint32_t box[2] = {box_inner, box_outer};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult result =
      encode(&map, type, 2, const_cast<void*>(address), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("fp4_gemm: cuTensorMapEncodeTiled for ", what,
                                            " failed with CUresult ", static_cast<int>(result)));
  }
  return map;
}

absl::Status check_alignment(const void* p, int bytes, const char* what) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (address % bytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("fp4_gemm: ", what, " at 0x", absl::Hex(address),
                                                   ": expected ", bytes, "-byte alignment"));
  }
  return absl::OkStatus();
}

// Scratch memory of one call: x permuted and padded to whole batch tiles, each block's two
// partial-sum slots, and each tile's two counts (tickets, slots written).
struct GemmScratch {
  int64_t padded_batch = 0;
  size_t x_bytes = 0, partial_bytes = 0, count_bytes = 0;
  size_t total() const { return x_bytes + partial_bytes + count_bytes; }
};

GemmScratch gemm_scratch(int64_t batch, int64_t k, int batch_tile, int64_t blocks, int64_t tiles) {
  auto round_up = [](size_t v) { return (v + 255) / 256 * 256; };
  GemmScratch s;
  s.padded_batch = (batch + batch_tile - 1) / batch_tile * batch_tile;
  s.x_bytes = round_up(static_cast<size_t>(s.padded_batch * k * 2));
  s.partial_bytes =
      round_up(sizeof(float) * static_cast<size_t>(blocks) * 2 * kConsumerThreads * batch_tile / 2);
  s.count_bytes = round_up(sizeof(int) * 2 * static_cast<size_t>(tiles));
  return s;
}

// The batch tile, the blocks an SM and the grid of a call, from a cost model in units of one
// tile step. One block a tile runs ceil(tiles / slots) waves, where an SM holds `per_sm`
// blocks; one block a slot runs the whole waves, then shares the rest of the tiles, where a
// step costs kSharedStep times as much (the blocks write and re-read their partial sums, and
// the last of a tile's blocks adds them). The step costs (a block's step, with `per_sm` blocks
// sharing its SM) and kSharedStep are fit to fp4_bench --gemm on the H200 (docs/fp4.md).
struct GemmPlan {
  int batch_tile = 0;
  int per_sm = 1;
  int64_t tiles = 0;
  int64_t blocks = 0;
};

struct TileShape {
  int batch_tile;
  int per_sm;
  double step;
};
// Two blocks an SM pay off on narrow tiles: at 28672 x 8192, 17-32 batch rows took 75.9-76.1
// us in tiles of 32 at two blocks an SM against 89.9 us in tiles of 64 at one (fp4_bench
// --gemm). At 8192 x 8192, 64 rows, the model picks 64 x 2 where 64 x 1 measured ~6% faster
// (38.2 against 36.1 us); at 28672 x 8192 it is the other way round (86-88 against 91-92 us),
// and one step cost cannot fit both.
constexpr TileShape kTileShapes[] = {{16, 2, 1.05}, {32, 2, 1.2},  {64, 2, 1.45},
                                     {64, 1, 0.9},  {128, 1, 1.1}, {256, 1, 1.6}};
constexpr double kSharedStep = 1.3;

bool shape_allowed(const TileShape& c, const GemmOptions& options) {
  return (options.batch_tile == 0 || options.batch_tile == c.batch_tile) &&
         (options.blocks_per_sm == 0 || options.blocks_per_sm == c.per_sm);
}

GemmPlan plan_gemm(int64_t batch, int64_t row_blocks, int64_t steps, int64_t sms,
                   const GemmOptions& options) {
  GemmPlan best;
  double best_cost = 0;
  for (const TileShape& c : kTileShapes) {
    if (!shape_allowed(c, options)) continue;
    const int64_t slots = sms * c.per_sm;
    const int64_t tiles = row_blocks * ((batch + c.batch_tile - 1) / c.batch_tile);
    const double waves = static_cast<double>((tiles + slots - 1) / slots);
    const double shared = static_cast<double>(tiles / slots) +
                          static_cast<double>(tiles % slots) / slots * kSharedStep;
    // Two blocks an SM always share: with fewer blocks than slots, one block a tile would
    // leave some SMs with one block and others with two.
    bool share = c.per_sm == 2 || shared < waves;
    if (options.grid == GemmGrid::kTilePerBlock) share = false;
    if (options.grid == GemmGrid::kResident) share = true;
    const double cost = (share ? shared : waves) * c.step;
    if (best.batch_tile == 0 || cost < best_cost) {
      int64_t blocks = options.max_blocks > 0 ? options.max_blocks : share ? slots : tiles;
      blocks = std::min<int64_t>(blocks, tiles * steps);
      // Every block gets a step of the shared tiles, or no tile is shared: the kernel counts
      // a shared tile's blocks from their runs, and an empty run would never arrive. Only a
      // max_blocks can break this (k = 256, 6 tiles, 5 blocks: 2 shared steps for 5 blocks).
      while (blocks > 1 && tiles % blocks != 0 && (tiles % blocks) * steps < blocks) --blocks;
      best = {c.batch_tile, c.per_sm, tiles, blocks};
      best_cost = cost;
    }
  }
  return best;
}

template <int kBn, int kPerSm, Format kFormat>
absl::Status launch_gemm(const DeviceWeightView& w, const uint16_t* xp, int64_t padded_batch,
                         const GemmParams& params, int blocks, cudaStream_t stream) {
  using Layout = GemmLayout<kBn, kPerSm>;
  VB_ASSIGN_OR_RETURN(const CUtensorMap x_map,
                      tensor_map(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, xp, w.k, padded_batch, w.k * 2,
                                 64, kBn, CU_TENSOR_MAP_SWIZZLE_128B, "x"));
  VB_ASSIGN_OR_RETURN(const CUtensorMap code_map,
                      tensor_map(CU_TENSOR_MAP_DATA_TYPE_UINT8, w.codes, w.k / 2, w.n, w.k / 2, 64,
                                 kGemmRows, CU_TENSOR_MAP_SWIZZLE_NONE, "codes"));
  // A row's scale bytes: k / 16 (NVFP4: a byte for 16 k; NF4, bnb_fp4: 4 for 64) or k / 32
  // (MXFP4: a byte for 32 k).
  const uint64_t scale_bytes = w.k / (kFormat == Format::kMxfp4 ? 32 : 16);
  VB_ASSIGN_OR_RETURN(const CUtensorMap scale_map,
                      tensor_map(CU_TENSOR_MAP_DATA_TYPE_UINT8, w.scales, scale_bytes, w.n,
                                 scale_bytes, 16, kGemmRows, CU_TENSOR_MAP_SWIZZLE_NONE, "scales"));
  VB_RETURN_IF_ERROR(cuda_status(
      cudaFuncSetAttribute(fp4_gemm_kernel<kBn, kPerSm, kFormat>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, Layout::kSmemBytes),
      "cudaFuncSetAttribute(fp4_gemm)"));
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kGemmThreads);
  config.dynamicSmemBytes = Layout::kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute early_start{};
  early_start.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  early_start.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &early_start;
  config.numAttrs = 1;
  return cuda_status(cudaLaunchKernelEx(&config, fp4_gemm_kernel<kBn, kPerSm, kFormat>, x_map,
                                        code_map, scale_map, params),
                     "fp4_gemm kernel launch");
}

// The kernel built for the plan's tile and blocks an SM.
template <Format kFormat>
absl::Status launch_planned(const GemmPlan& plan, const DeviceWeightView& w, const uint16_t* xp,
                            int64_t padded_batch, const GemmParams& params, int blocks,
                            cudaStream_t stream) {
  switch (plan.batch_tile * 10 + plan.per_sm) {
    case 162:
      return launch_gemm<16, 2, kFormat>(w, xp, padded_batch, params, blocks, stream);
    case 322:
      return launch_gemm<32, 2, kFormat>(w, xp, padded_batch, params, blocks, stream);
    case 642:
      return launch_gemm<64, 2, kFormat>(w, xp, padded_batch, params, blocks, stream);
    case 641:
      return launch_gemm<64, 1, kFormat>(w, xp, padded_batch, params, blocks, stream);
    case 1281:
      return launch_gemm<128, 1, kFormat>(w, xp, padded_batch, params, blocks, stream);
    default:
      return launch_gemm<256, 1, kFormat>(w, xp, padded_batch, params, blocks, stream);
  }
}

}  // namespace

absl::Status fp4_gemm_supported(const DeviceWeightView& weight, int64_t batch, Activation type) {
  VB_RETURN_IF_ERROR(backends::fp4::check_shape(weight.format, weight.n, weight.k));
  if (type != Activation::kBf16) {
    return absl::InvalidArgumentError("fp4_gemm: fp16 activations: expected bf16");
  }
  // A row's scales are read in 16-byte boxes from rows a multiple of 16 bytes apart (the tensor
  // map's rule): 256 k of NVFP4, NF4 and bnb_fp4, 512 of MXFP4.
  const int64_t k_multiple = weight.format == Format::kMxfp4 ? 512 : 256;
  if (weight.k < k_multiple || weight.k % k_multiple != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_gemm: k = ", weight.k, ": expected a positive multiple of ", k_multiple,
                     " for ", backends::fp4::format_name(weight.format)));
  }
  if (weight.n < 1 || weight.n > (int64_t{1} << 30) || weight.k > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("fp4_gemm: weight of ", weight.n, " x ",
                                                   weight.k, ": expected 1..2^30 rows and k"));
  }
  if (batch < 1 || batch > 65535 * 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_gemm: batch ", batch, ": expected 1..", 65535 * 128));
  }
  // The kernel counts steps of 128 weight rows x 64 batch rows x 128 k (its smallest tile) in
  // 32-bit integers.
  const int64_t most_steps = (weight.n + 127) / 128 * ((batch + 63) / 64) * (weight.k / 128);
  if (most_steps >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_gemm: ", weight.n, " x ", weight.k, " weight at batch ", batch,
                     ": more than 2^31 tile steps of 128 x 64 x 128; split the batch"));
  }
  VB_RETURN_IF_ERROR(check_alignment(weight.codes, 16, "weight codes"));
  VB_RETURN_IF_ERROR(check_alignment(weight.scales, 16, "weight scales"));
  int device = 0, major = 0, minor = 0;
  VB_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  VB_RETURN_IF_ERROR(
      cuda_status(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                  "cudaDeviceGetAttribute"));
  VB_RETURN_IF_ERROR(
      cuda_status(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
                  "cudaDeviceGetAttribute"));
  if (major != 9 || minor != 0) {
    return absl::FailedPreconditionError(absl::StrCat("fp4_gemm: device ", device, " is sm_", major,
                                                      minor,
                                                      ": the kernel is built for sm_90a (Hopper)"));
  }
  return absl::OkStatus();
}

absl::Status fp4_gemm(const DeviceWeightView& weight, const void* x, int64_t batch, Activation type,
                      const void* bias, void* y, cudaStream_t stream, GemmOptions options) {
  VB_RETURN_IF_ERROR(fp4_gemm_supported(weight, batch, type));
  if (options.batch_tile != 0 && options.batch_tile != 16 && options.batch_tile != 32 &&
      options.batch_tile != 64 && options.batch_tile != 128 && options.batch_tile != 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_gemm: batch_tile = ", options.batch_tile,
                     ": expected 0 (chosen), 16, 32, 64, 128 or 256"));
  }
  if (options.blocks_per_sm < 0 || options.blocks_per_sm > 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fp4_gemm: blocks_per_sm = ", options.blocks_per_sm, ": expected 0 (chosen), 1 or 2"));
  }
  if (std::none_of(std::begin(kTileShapes), std::end(kTileShapes),
                   [&](const TileShape& c) { return shape_allowed(c, options); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_gemm: batch_tile = ", options.batch_tile,
                     " with blocks_per_sm = ", options.blocks_per_sm,
                     ": expected tiles of 16 or 32 at 2 blocks an SM, 64 at 1 or 2, "
                     "128 or 256 at 1"));
  }
  if (options.max_blocks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("fp4_gemm: max_blocks = ", options.max_blocks,
                                                   ": expected 0 (chosen) or more"));
  }

  if (x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("fp4_gemm: x or y is null");
  }
  VB_RETURN_IF_ERROR(check_alignment(x, 16, "x"));
  VB_RETURN_IF_ERROR(check_alignment(y, 2, "y"));
  if (bias != nullptr) VB_RETURN_IF_ERROR(check_alignment(bias, 2, "bias"));
  int device = 0, sms = 0;
  VB_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  VB_RETURN_IF_ERROR(
      cuda_status(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
                  "cudaDeviceGetAttribute"));
  VB_RETURN_IF_ERROR(keep_scratch_pool(device));

  const int64_t row_blocks = (weight.n + kGemmRows - 1) / kGemmRows;
  const GemmPlan plan = plan_gemm(batch, row_blocks, weight.k / 128, sms, options);
  if (plan.tiles * (weight.k / 128) >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fp4_gemm: ", weight.n, " x ", weight.k, " weight at batch ", batch, " in tiles of ",
        plan.batch_tile, " batch rows: more than 2^31 tile steps; split the batch"));
  }
  const GemmScratch scratch =
      gemm_scratch(batch, weight.k, plan.batch_tile, plan.blocks, plan.tiles);

  uint8_t* memory = nullptr;
  VB_RETURN_IF_ERROR(
      cuda_status(cudaMallocAsync(reinterpret_cast<void**>(&memory), scratch.total(), stream),
                  "cudaMallocAsync(fp4_gemm scratch)"));
  auto permute_and_multiply = [&]() -> absl::Status {
    auto* xp = reinterpret_cast<uint16_t*>(memory);
    const int64_t elements = scratch.padded_batch * weight.k;
    const int64_t threads = 256, permute_blocks = (elements / 8 + threads - 1) / threads;
    int* tile_counts = reinterpret_cast<int*>(memory + scratch.x_bytes + scratch.partial_bytes);
    permute_x_kernel<<<static_cast<unsigned>(permute_blocks), threads, 0, stream>>>(
        static_cast<const uint16_t*>(x), xp, batch, scratch.padded_batch,
        static_cast<int>(weight.k), tile_counts, 2 * plan.tiles);
    VB_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "fp4_gemm permute launch"));
    GemmParams params{};
    params.tensor_scale = weight.tensor_scale;
    params.n = static_cast<int>(weight.n);
    params.k = static_cast<int>(weight.k);
    params.batch = static_cast<int>(batch);
    params.batch_blocks = static_cast<int>(scratch.padded_batch / plan.batch_tile);
    params.tiles = static_cast<int>(plan.tiles);
    params.l2_hints = options.l2_hints ? 1 : 0;
    params.word_stores =
        options.word_stores && weight.n % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 8 == 0 ? 1 : 0;
    params.bias = static_cast<const __nv_bfloat16*>(bias);
    params.y = static_cast<__nv_bfloat16*>(y);
    params.partials = reinterpret_cast<float*>(memory + scratch.x_bytes);
    params.tile_counts = tile_counts;
    const int grid = static_cast<int>(plan.blocks);
    const int64_t rows = scratch.padded_batch;
    switch (weight.format) {
      case Format::kMxfp4:
        return launch_planned<Format::kMxfp4>(plan, weight, xp, rows, params, grid, stream);
      case Format::kNf4:
        return launch_planned<Format::kNf4>(plan, weight, xp, rows, params, grid, stream);
      case Format::kBnbFp4:
        return launch_planned<Format::kBnbFp4>(plan, weight, xp, rows, params, grid, stream);
      default:
        return launch_planned<Format::kNvfp4>(plan, weight, xp, rows, params, grid, stream);
    }
  };
  const absl::Status status = permute_and_multiply();
  const absl::Status freed =
      cuda_status(cudaFreeAsync(memory, stream), "cudaFreeAsync(fp4_gemm scratch)");
  return status.ok() ? freed : status;
}

}  // namespace vb::backends::cuda::fp4
