// The tmoe program's one nvcc translation unit (built only with CUDA): the CUDA backend's
// definitions, which `--device cuda` reaches through tmoe/backend/cuda/gqa_model.hpp.
#include "tmoe/backend/cuda/api_impl.cuh"
