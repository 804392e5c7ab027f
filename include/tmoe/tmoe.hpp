// tmoe/tmoe.hpp: the umbrella header: everything CPU-side. Never includes CUDA; CUDA users add
// tmoe/backend/cuda/api.hpp and link tmoe::cuda.
#pragma once

#include "tmoe/config.hpp"
#include "tmoe/core/compiled_sets.hpp"
#include "tmoe/core/dispatch.hpp"
#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/extents.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/backend/cpu/isa.hpp"
#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/backend/cpu/ops.hpp"
#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/backend/reference/blas.hpp"
#include "tmoe/backend/reference/quant.hpp"
#include "tmoe/backend/reference/reduce.hpp"
#include "tmoe/quant/formats.hpp"
#include "tmoe/quant/quantize.hpp"
