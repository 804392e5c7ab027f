// examples/tmoe/device.hpp: `--device cpu|cuda` for the commands that run a model. With CUDA
// (tmoe built with TMOE_ENABLE_CUDA and a CUDA toolkit: TMOE_WITH_CUDA), `cuda` loads the model
// onto the GPU as cuda::GqaModel (dense Qwen2 / Llama) or cuda::DeepseekModel (MLA configs:
// DeepSeek-V3 / R1, V2), and the built-in default model as a cuda::DeepseekModel; without it,
// `--device cuda` fails with one line saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tmoe/core/error.hpp"
#include "tmoe/models/model.hpp"
#if defined(TMOE_WITH_CUDA)
#include "tmoe/backend/cuda/deepseek_model.hpp"
#include "tmoe/backend/cuda/default_model.hpp"
#endif

namespace tmoe::cli {

// "cpu" (the default) or "cuda"; anything else is an error naming the value.
inline bool want_cuda(const std::string& device, const char* op) {
  check(device == "cpu" || device == "cuda", op, "--device must be cpu or cuda, got '", device,
        "'");
  return device == "cuda";
}

#if defined(TMOE_WITH_CUDA)
// The GPU models' options from the command's load options.
inline cuda::ModelOptions cuda_options(const models::LoadOptions& o) {
  cuda::ModelOptions co;
  co.max_context = o.max_context;
  return co;
}
#else
[[noreturn]] inline void fail_no_cuda(const char* op) {
  fail(op,
       "--device cuda: this tmoe was built without CUDA (configure with a CUDA toolkit and "
       "TMOE_ENABLE_CUDA=ON)");
}
#endif

// The model folder at `path` on the GPU.
inline std::unique_ptr<models::Model> load_cuda_model([[maybe_unused]] const std::string& path,
                                                      [[maybe_unused]] const models::LoadOptions& o,
                                                      [[maybe_unused]] const char* op) {
#if defined(TMOE_WITH_CUDA)
  return cuda::load_any_model(path, cuda_options(o));
#else
  fail_no_cuda(op);
#endif
}

// The built-in default model (random weights from `seed`) on the GPU.
inline std::unique_ptr<models::Model> cuda_default_model(
    [[maybe_unused]] std::uint64_t seed, [[maybe_unused]] const models::LoadOptions& o,
    [[maybe_unused]] const char* op) {
#if defined(TMOE_WITH_CUDA)
  return cuda::default_model(seed, cuda_options(o));
#else
  fail_no_cuda(op);
#endif
}

}  // namespace tmoe::cli
