"""PyTorch's decode GEMV at the shapes of bench_cuda_gemv, for a side-by-side table.

Times torch.nn.functional.linear(x, W) for one bf16 token (x (1, in), W (out, in) bf16) with CUDA
events (median of many launches, rotating weight copies beyond 4x the L2), plus the same
device-to-device copy that bench_cuda_gemv measures. Prints rows in bench_cuda_gemv's format.
"""
import sys

import torch

REPS = 50


def median_ms(fn, reps=REPS):
    for i in range(5):
        fn(i)
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    dev = torch.cuda.get_device_properties(0)
    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    copy_gbs = 2 * n / (median_ms(lambda i: dst.copy_(src), 20) * 1e-3) / 1e9
    print(f"torch {torch.__version__} on {dev.name}; device-to-device copy: {copy_gbs:.1f} GB/s")
    print(f"{'kernel':<28} {'out x in':<12} {'R,U,W':<10} {'us':>9} {'GB/s':>9} {'/copy':>8}")
    l2 = getattr(dev, "L2_cache_size", 50 << 20)
    shapes = [(18432, 7168), (7168, 18432), (2048, 7168), (7168, 2048), (576, 7168),
              (1536, 7168), (24576, 1536), (7168, 16384)]
    for out, inn in shapes:
        wbytes = out * inn * 2
        copies = max(1, 4 * l2 // wbytes + 1)
        ws = [torch.randn(out, inn, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        x = torch.randn(1, inn, device="cuda", dtype=torch.bfloat16)
        ms = median_ms(lambda i: torch.nn.functional.linear(x, ws[i % copies]))
        gbs = (wbytes + inn * 2 + out * 2) / (ms * 1e-3) / 1e9
        print(f"{'torch F.linear bf16':<28} {f'{out}x{inn}':<12} {'-':<10} {ms * 1e3:9.1f} "
              f"{gbs:9.1f} {gbs / copy_gbs:8.3f}")
        del ws
    sys.stdout.flush()


if __name__ == "__main__":
    main()
