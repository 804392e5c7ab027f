// tmoe logits: reads input_ids (int64 [B, T]) from a safetensors file and writes logits (float32
// [B, T, V]) for every position, each row its own sequence from position 0. Needs only the
// model's config.json and weights.
#include <cstdio>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "device.hpp"
#include "model_path.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/models/model.hpp"

namespace tmoe::cli {

int cmd_logits(const Argv& argv) {
  Args args("logits", argv, {"--model", "--input", "--output", "-t", "--device", "--weights"});
  const std::string path = args.required("--model"), in = args.required("--input"),
                    out = args.required("--output");
  check_model_path(path, "logits");
  const bool cuda = want_cuda(args.str("--device", "cpu"), "logits");
  const io::SafetensorsModel input(in);
  check(input.contains("input_ids"), "logits", in, ": no tensor 'input_ids'");
  const auto ids = input.view<std::int64_t, DExtents<2>>("input_ids");
  const std::size_t B = ids.rows(), T = ids.cols();
  check(B > 0 && T > 0, "logits", in, ": input_ids is empty [", B, ",", T, "]");
  models::LoadOptions opt;
  opt.max_context = T;
  opt.progress = load_progress_bar();
  opt.quantize = weights_option(args, "logits");
  check(!(cuda && opt.quantize), "logits", "--weights is not supported with --device cuda");
  auto model = cuda ? load_cuda_model(path, opt, "logits") : models::load_model(path, opt);
  check(T <= model->max_context(), "logits", in, ": ", T, " tokens exceed the model's ",
        model->max_context(), " positions");
  const std::size_t V = model->vocab_size();
  ThreadPool pool(static_cast<int>(args.integer("-t", 2)));
  std::vector<float> logits(B * T * V);
  std::vector<std::int32_t> tok(T);
  for (std::size_t b = 0; b < B; ++b) {
    for (std::size_t t = 0; t < T; ++t) {
      const std::int64_t id = ids(b, t);
      check(id >= 0 && static_cast<std::size_t>(id) < V, "logits", in, ": input_ids[", b, ",", t,
            "] = ", id, " is outside the vocabulary of ", V);
      tok[t] = static_cast<std::int32_t>(id);
    }
    auto state = model->new_state(T);
    model->forward(pool, *state, tok, MatrixView<float>(logits.data() + b * T * V, T, V));
  }
  io::SafetensorsWriter w;
  w.add<float>("logits", {B, T, V}, std::span<const float>(logits));
  w.write(out);
  std::fprintf(stderr, "[tmoe] wrote logits [%zu, %zu, %zu] to %s\n", B, T, V, out.c_str());
  return 0;
}

}  // namespace tmoe::cli
