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
#include "tmoe/backend/reference/blas.hpp"
#include "tmoe/backend/reference/reduce.hpp"
#include "tmoe/io/chat_template.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/io/gguf.hpp"
#include "tmoe/io/mmap.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/io/tokenizer.hpp"
