// tmoe bench: prefill and decode speed like llama-bench, read against the machine's read
// bandwidth measured in the same run with the same thread pool.
//
//   pp N: one forward of N random tokens into an empty cache (the logits of the last one);
//   tg N: N forwards of one random token each, starting from an empty cache.
// Each test runs once untimed (warm-up: pages the weights in, sizes the scratch buffers), then
// -r times, each repetition on a fresh state; the median and the spread (min, max) are reported in
// tokens/s. Then a ReadBandwidthProbe (a sum over a 1 GiB array split over the -t threads, see
// tmoe/runtime/read_bandwidth.hpp) runs max(-r, 3) timed passes after one warm pass. The
// fraction of the read bandwidth decode reaches is bytes_per_token * tg_tok_s / read_bw, where
// bytes_per_token is what one decode step reads (Model::decode_weight_bytes: embedding row,
// attention and dense matrices, top-k routed and shared experts, LM head).
//
// A human table goes to stdout, then (--json) one JSON object on the last line. Without --model
// it benches the built-in default model, as `tmoe generate` runs it.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "model_path.hpp"
#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/models/default_model.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/runtime/read_bandwidth.hpp"

namespace tmoe::cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Median, min and max of a set of rates.
struct Spread {
  double median = 0, min = 0, max = 0;
};

Spread spread_of(std::vector<double> v) {
  Spread s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.min = v.front();
  s.max = v.back();
  return s;
}

class Runner {
 public:
  Runner(const models::Model& m, ThreadPool& pool, std::size_t capacity)
      : m_(&m), pool_(&pool), cap_(capacity), logits_(std::size_t{1}, m.vocab_size()) {}

  // One prefill of `tokens` into a fresh state: tokens/s.
  double pp(std::span<const std::int32_t> tokens) {
    auto state = m_->new_state(cap_);
    const auto t0 = Clock::now();
    m_->forward(*pool_, *state, tokens, logits_.view());
    return static_cast<double>(tokens.size()) / seconds_since(t0);
  }

  // tokens.size() single-token forwards into a fresh state: tokens/s.
  double tg(std::span<const std::int32_t> tokens) {
    auto state = m_->new_state(cap_);
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < tokens.size(); ++i)
      m_->forward(*pool_, *state, tokens.subspan(i, 1), logits_.view());
    return static_cast<double>(tokens.size()) / seconds_since(t0);
  }

 private:
  const models::Model* m_;
  ThreadPool* pool_;
  std::size_t cap_;
  Matrix<float> logits_;  // (1, vocab)
};

std::string model_format(bool builtin, const std::string& path) {
  if (builtin) return "builtin";
  return std::filesystem::is_directory(path) ? "hf" : "gguf";
}

nlohmann::json rate_or_null(double v, bool ran) {
  return ran ? nlohmann::json(v) : nullptr;
}

}  // namespace

int cmd_bench(const Argv& argv) {
  Args args("bench", argv, {"--model", "-p", "-n", "-t", "-r", "--bw-mib", "--seed"}, {"--json"});
  const bool builtin = !args.has("--model");
  const std::string path = args.str("--model");
  if (!builtin) check_model_path(path, "bench");
  const long long p = args.integer("-p", 512), n = args.integer("-n", 128),
                  threads = args.integer("-t", 2), reps = args.integer("-r", 5),
                  bw_mib = args.integer("--bw-mib", 1024);
  check(p >= 0 && p <= 1000000, "bench", "-p must be in [0, 1000000], got ", p);
  check(n >= 0 && n <= 1000000, "bench", "-n must be in [0, 1000000], got ", n);
  check(p + n > 0, "bench", "nothing to measure: -p and -n are both 0");
  check(threads >= 1 && threads <= 1024, "bench", "-t must be in [1, 1024], got ", threads);
  check(reps >= 1 && reps <= 1000, "bench", "-r must be in [1, 1000], got ", reps);
  check(bw_mib >= 1 && bw_mib <= 65536, "bench", "--bw-mib must be in [1, 65536], got ", bw_mib);

  models::LoadOptions opt;
  opt.max_context = static_cast<std::size_t>(std::max<long long>({p, n, 1}));
  const auto t_load = Clock::now();
  std::unique_ptr<models::Model> model;
  if (builtin) {
    std::fprintf(stderr, "[tmoe] no --model: benching the built-in default model\n");
    model = models::default_model(0x7a0e, opt);
  } else {
    std::fprintf(stderr, "[tmoe] loading %s\n", path.c_str());
    model = models::load_model(path, opt);
  }
  const double load_seconds = seconds_since(t_load);
  const std::size_t cap = opt.max_context;
  check(cap <= model->max_context(), "bench", "-p/-n of ", cap,
        " tokens exceed the model's max_position_embeddings of ", model->max_context());

  std::mt19937_64 rng(static_cast<std::uint64_t>(args.integer("--seed", 1234)));
  std::uniform_int_distribution<std::int32_t> pick(
      0, static_cast<std::int32_t>(model->vocab_size() - 1));
  std::vector<std::int32_t> pp_tokens(static_cast<std::size_t>(p)),
      tg_tokens(static_cast<std::size_t>(n));
  for (auto& t : pp_tokens) t = pick(rng);
  for (auto& t : tg_tokens) t = pick(rng);

  ThreadPool pool(static_cast<int>(threads));
  Runner run(*model, pool, cap);
  std::vector<double> pp_rates, tg_rates, bw_rates;
  if (p > 0) {
    run.pp(pp_tokens);
    for (long long i = 0; i < reps; ++i) pp_rates.push_back(run.pp(pp_tokens));
  }
  if (n > 0) {
    run.tg(std::span<const std::int32_t>(tg_tokens).first(std::min<std::size_t>(n, 8)));
    for (long long i = 0; i < reps; ++i) tg_rates.push_back(run.tg(tg_tokens));
  }
  {
    ReadBandwidthProbe probe(pool, static_cast<std::size_t>(bw_mib) << 20);
    probe.pass();
    for (long long i = 0; i < std::max<long long>(reps, 3); ++i) bw_rates.push_back(probe.pass());
  }
  const Spread pps = spread_of(pp_rates), tgs = spread_of(tg_rates), bws = spread_of(bw_rates);
  const double bytes = static_cast<double>(model->decode_weight_bytes());
  const double fraction = n > 0 ? bytes * tgs.median / bws.median : 0.0;

  const std::string name = builtin ? std::string("(built-in default model)") : path;
  const std::string fmt = model_format(builtin, path);
  const char* isa = cpu::isa_name(cpu::kernels().isa).data();
  std::printf("model: %s (%s, %s weights, %s kernels), loaded in %.2f s\n", name.c_str(),
              fmt.c_str(), model->weight_format().c_str(), isa, load_seconds);
  std::printf("| %-7s | %7s | %4s | %12s | %12s | %12s |\n", "test", "threads", "reps",
              "t/s median", "t/s min", "t/s max");
  std::printf("|---------|---------|------|--------------|--------------|--------------|\n");
  if (p > 0)
    std::printf("| pp%-5lld | %7lld | %4lld | %12.2f | %12.2f | %12.2f |\n", p, threads, reps,
                pps.median, pps.min, pps.max);
  if (n > 0)
    std::printf("| tg%-5lld | %7lld | %4lld | %12.2f | %12.2f | %12.2f |\n", n, threads, reps,
                tgs.median, tgs.min, tgs.max);
  std::printf("read bandwidth (%lld threads, sum over %lld MiB): %.2f GB/s median (%.2f .. %.2f)\n",
              threads, bw_mib, bws.median / 1e9, bws.min / 1e9, bws.max / 1e9);
  std::printf("bytes read per decoded token: %.1f MB", bytes / 1e6);
  if (n > 0)
    std::printf(" -> decode reads %.2f GB/s = %.0f%% of the read bandwidth",
                bytes * tgs.median / 1e9, 100.0 * fraction);
  std::printf("\n");

  if (args.has("--json")) {
    nlohmann::json j;
    j["model"] = builtin ? std::string() : path;
    j["format"] = fmt;
    j["weight_format"] = model->weight_format();
    j["isa"] = isa;
    j["threads"] = threads;
    j["reps"] = reps;
    j["n_prompt"] = p;
    j["n_gen"] = n;
    j["pp_tok_s"] = rate_or_null(pps.median, p > 0);
    j["pp_tok_s_min"] = rate_or_null(pps.min, p > 0);
    j["pp_tok_s_max"] = rate_or_null(pps.max, p > 0);
    j["tg_tok_s"] = rate_or_null(tgs.median, n > 0);
    j["tg_tok_s_min"] = rate_or_null(tgs.min, n > 0);
    j["tg_tok_s_max"] = rate_or_null(tgs.max, n > 0);
    j["bytes_per_token"] = model->decode_weight_bytes();
    j["read_bw_gbs"] = bws.median / 1e9;
    j["read_bw_gbs_min"] = bws.min / 1e9;
    j["read_bw_gbs_max"] = bws.max / 1e9;
    j["bw_fraction"] = rate_or_null(fraction, n > 0);
    j["load_seconds"] = load_seconds;
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace tmoe::cli
