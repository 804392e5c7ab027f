# bench/cuda/torch_gemm.py: torch.matmul (bf16, the prefill GEMM of an eager model) at the shapes
# of bench_cuda_gemm, timed the same way (median of 30 batches of 10 calls, CUDA events). Two
# columns: the bf16 result (torch's default) and, where torch has it, an fp32 result
# (torch.mm(..., out_dtype=torch.float32)), which is what tmoe's gemm_bf16 writes.
#   python3 bench/cuda/torch_gemm.py [--tokens T]
import argparse

import torch

SHAPES = [("r1.q_a", 1536, 7168), ("r1.q_b", 24576, 1536), ("r1.kv_a", 576, 7168),
          ("r1.o", 7168, 16384), ("r1.gate_up", 18432, 7168), ("r1.down", 7168, 18432),
          ("qwen1.5b.qkv", 2048, 1536), ("qwen1.5b.o", 1536, 1536),
          ("qwen1.5b.gate_up", 17920, 1536), ("qwen1.5b.down", 1536, 8960),
          ("qwen1.5b.lm_head", 151936, 1536)]


def median_ms(fn):
    for _ in range(20):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms = []
    for _ in range(30):
        a.record()
        for _ in range(10):
            fn()
        b.record()
        torch.cuda.synchronize()
        ms.append(a.elapsed_time(b) / 10)
    ms.sort()
    return ms[len(ms) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=0)
    args = p.parse_args()
    tokens = [args.tokens] if args.tokens else [512, 2048]
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    print("| shape | T | out x in | torch.matmul bf16 us | TFLOP/s | fp32 out us | TFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    g = torch.Generator(device="cuda").manual_seed(5)
    for T in tokens:
        for name, out, inn in SHAPES:
            w = (torch.rand(out, inn, device="cuda", generator=g) * 0.1 - 0.05).bfloat16()
            x = (torch.rand(T, inn, device="cuda", generator=g) * 2 - 1).bfloat16()
            wt = w.t()
            ms = median_ms(lambda: torch.matmul(x, wt))
            flops = 2.0 * T * out * inn
            try:
                ms32 = median_ms(lambda: torch.mm(x, wt, out_dtype=torch.float32))
                f32 = f"{ms32 * 1e3:.1f} | {flops / (ms32 * 1e-3) / 1e12:.1f}"
            except (TypeError, RuntimeError):
                f32 = "- | -"
            print(f"| {name} | {T} | {out}x{inn} | {ms * 1e3:.1f} | "
                  f"{flops / (ms * 1e-3) / 1e12:.1f} | {f32} |")
            del w, x, wt


if __name__ == "__main__":
    main()
