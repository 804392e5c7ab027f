"""Decode tok/s of Hugging Face transformers (eager attention, bf16) at the shape bench_cuda_model
times: DeepSeek-R1-Distill-Qwen-1.5B (Qwen2ForCausalLM, hidden 1536, 28 layers, 12/2 heads of 128,
MLP 8960, vocab 151936), random weights made on the GPU. Greedy decode with the KV cache: one
model(...) call per token, argmax on the device, synchronized at the end; the same prompt lengths
and token counts as bench_cuda_model's defaults.

    python3 bench/cuda/torch_model.py [--layers 28] [--prompt 32] [--new 256] [--long 1024]
"""
import argparse
import time

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=28)
p.add_argument("--prompt", type=int, default=32)
p.add_argument("--new", type=int, default=256)
p.add_argument("--long", type=int, default=1024)
a = p.parse_args()

cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, num_hidden_layers=a.layers,
                  intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                  max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=10000.0,
                  tie_word_embeddings=False, attn_implementation="eager")
torch.manual_seed(0)
with torch.device("cuda"):
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name()}, attn {model.config._attn_implementation}")


@torch.inference_mode()
def decode(ctx, n):
    ids = (torch.arange(ctx, device="cuda") * 7919 + 13) % cfg.vocab_size
    out = model(ids[None], use_cache=True)
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        out = model(tok, past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


@torch.inference_mode()
def prefill(n):
    ids = ((torch.arange(n, device="cuda") * 7919 + 13) % cfg.vocab_size)[None]
    model(ids, use_cache=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    model(ids, use_cache=True)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


decode(a.prompt, 16)  # warm-up
rows = [(f"decode, context {a.prompt}..{a.prompt + a.new}", decode(a.prompt, a.new)),
        (f"decode, context {a.long}..{a.long + a.new}", decode(a.long, a.new)),
        (f"prefill {a.prompt} tokens", prefill(a.prompt)),
        (f"prefill {a.long} tokens", prefill(a.long))]
print(f"\n| transformers eager bf16, {a.layers} layers | tok/s | ms/token |")
print("| --- | --- | --- |")
for what, r in rows:
    print(f"| {what} | {r:.1f} | {1e3 / r:.3f} |")
