// tmoe/core/compiled_sets.hpp: every closed set of sizes that tmoe compiles kernels for, in one
// place. Adding a value here adds instantiations (and build time) to every kernel dispatched over
// the set; a value missing here is a clear run-time error naming the set (core/dispatch.hpp).
#pragma once

#include "tmoe/core/dispatch.hpp"

namespace tmoe {

// Attention head dims (GQA q/k/v; MLA v_head_dim and qk_nope_head_dim).
using kHeadDims = ValueList<64, 128>;
// Rotary sub-range widths (R1 rotates 64 of its 192 q/k dims).
using kRopeDims = ValueList<32, 64, 128>;
// MLA latent ranks (kv_lora_rank).
using kLatentRanks = ValueList<128, 512>;

}  // namespace tmoe
