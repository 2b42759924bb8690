// Plain reads of device memory, the ceiling that a kernel streaming the same bytes can reach:
// fp4_bench prints the 4-bit Linear against a read of its packed weight, and against the
// access shapes the kernels use (bench/read_probe.cu).
#pragma once

#include <cstddef>
#include <cstdint>

namespace vb::bench {

// Reads `bytes` (a multiple of 16, 16-byte aligned) at `src` once: 16-byte loads that skip
// L1, four in flight per thread, a grid of `blocks_per_sm` blocks of 256 threads an SM.
// Enqueued on the legacy default stream; `sink` (4 device bytes) keeps the loads alive.
void launch_plain_read(const void* src, size_t bytes, int sms, int blocks_per_sm, uint32_t* sink);

// Reads `rows` rows (a multiple of rows_per_load) of `row_bytes` (a multiple of 512) at `src`,
// each warp owning `rows_per_load` consecutive rows (1, 2, 4, 8 or 16) and reading
// 512 / rows_per_load bytes of each per 16-byte load: the shape of one warp load, from one row x
// 512 bytes to 16 rows x 32 bytes (the 4-bit kernels' MMA layout loads 8 rows x 64 bytes, or 4 x
// 128 with two k segments). `loads_in_flight` (2, 4 or 8) loads per thread are issued before any is
// used. Returns false for a shape that is not built.
bool launch_rows_read(const void* src, int rows, int row_bytes, int rows_per_load,
                      int loads_in_flight, uint32_t* sink);

// The same shapes with only `blocks_per_sm` blocks of 8 warps an SM, as the 4-bit kernels
// have resident (2: 16 warps, where registers cap them), each warp walking row groups in turn with
// `loads_in_flight` (2, 4 or 8) loads a thread issued before any is used: whether so few warps and
// loads can stream the weight at all. Returns false for a shape that is not built.
bool launch_rows_read_resident(const void* src, int rows, int row_bytes, int rows_per_load,
                               int loads_in_flight, int sms, int blocks_per_sm, uint32_t* sink);

// Busy work a consumer does per 16-byte word it reads, in rounds of about 4 integer-pipe
// instructions (byte permute, shifts, a 3-input logic op): the 4-bit kernels issue ~100 (the
// integer kernel) to ~128 (the direct kernel) instructions per 16-byte load of a lane.
// The two probes below stream 16 rows x `row_bytes` groups with that much work per word, so
// that their times tell how a load path stands up once the issue slots are busy.
//
// Registers: each warp of 8-warp blocks (`blocks_per_sm` an SM) walks 16-row groups, loading
// 16 bytes of 8 rows x 64 bytes a load (the direct kernel's layout), `loads_in_flight` (2 or 4)
// loads ahead of the word it works on, as the kernels do. Rounds: 0, 25 or 32.
bool launch_rows_work_registers(const void* src, int rows, int row_bytes, int loads_in_flight,
                                int rounds, int sms, int blocks_per_sm, uint32_t* sink);

// Bulk copies: one producer warp per block moves each 16-row group, 512 bytes of every row at a
// time, into a ring of `stages` (4 or 8) shared-memory stages with cp.async.bulk, completing
// an mbarrier per stage; 8 consumer warps read their 64-byte column of every row of a stage
// from shared memory, do the same work, and release the stage through a second mbarrier. The
// consumers issue no global load and no address arithmetic for one: whether a warp-specialized
// kernel would stream faster than the register-fed ones. `row_bytes` a multiple of 512.
bool launch_rows_work_bulk(const void* src, int rows, int row_bytes, int stages, int rounds,
                           int sms, int blocks_per_sm, uint32_t* sink);

}  // namespace vb::bench
