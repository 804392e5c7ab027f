// The one nvcc translation unit of test_cuda: it defines what tmoe/backend/cuda/api.hpp declares.
// The tests themselves are plain C++ (g++) and see only api.hpp.
#include "tmoe/backend/cuda/api_impl.cuh"
