// The one nvcc translation unit of bench_cuda_deepseek: the CUDA backend's definitions.
#include "tmoe/backend/cuda/api_impl.cuh"
