// tmoe/backend/cuda/default_model.hpp: the built-in default model (models/default_model.hpp: a
// small DeepSeek-R1-architecture MoE with random bf16 weights) on the GPU, as a
// cuda::DeepseekModel made from the very weights the CPU default model runs for the same seed,
// so both give the same logits up to summation order (tests/cuda/test_deepseek_prefill.cpp).
// `tmoe generate --device cuda` without --model runs it.
#pragma once

#include <cstdint>
#include <memory>

#include "tmoe/backend/cuda/api.hpp"
#include "tmoe/backend/cuda/deepseek_model.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/models/default_model.hpp"

namespace tmoe::cuda {

inline std::unique_ptr<DeepseekModel> default_model(std::uint64_t seed = 0x7a0e,
                                                    const ModelOptions& opt = {}) {
  check(device_count() > opt.device, "cuda::default_model", "no CUDA device ", opt.device, " (",
        device_count() == 0 ? device_count_error() : "out of range", ")");
  return std::make_unique<DeepseekModel>(models::default_model_config(),
                                         models::default_model_weights(seed), opt);
}

}  // namespace tmoe::cuda
