// The model builders of tmoe/models/model.hpp for every weight format, compiled once for programs
// that define TMOE_MODELS_EXTERN (CMake: tmoe_add_models_library).
#include "tmoe/models/model.hpp"

namespace tmoe::models::detail {
template std::unique_ptr<Model> build_family<float>(const io::ModelConfig&,
                                                    std::unique_ptr<WeightLoader>, std::size_t,
                                                    const LoadOptions&);
template std::unique_ptr<Model> build_family<bf16>(const io::ModelConfig&,
                                                   std::unique_ptr<WeightLoader>, std::size_t,
                                                   const LoadOptions&);
template std::unique_ptr<Model> build_family<f16>(const io::ModelConfig&,
                                                  std::unique_ptr<WeightLoader>, std::size_t,
                                                  const LoadOptions&);
template std::unique_ptr<Model> build_family<AnyFormat>(const io::ModelConfig&,
                                                        std::unique_ptr<WeightLoader>, std::size_t,
                                                        const LoadOptions&);
}  // namespace tmoe::models::detail
