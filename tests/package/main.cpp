// Uses tmoe from another project: a tensor, a kernel from the run-time-selected ISA table.
#include <tmoe/tmoe.hpp>

#include <cstdio>

int main() {
  tmoe::Vector<float> x(100);
  for (std::size_t i = 0; i < x.size(); ++i) x(i) = float(i);
  const auto& k = tmoe::cpu::kernels();
  const float s = k.reduce.sum(x.data(), x.size());
  std::printf("tmoe %s consumer: isa %s, sum %.0f\n", TMOE_VERSION_STRING,
              std::string(tmoe::cpu::isa_name(k.isa)).c_str(), s);
  return s == 4950.f ? 0 : 1;
}
