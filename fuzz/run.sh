#!/usr/bin/env bash
# Builds tmoe's libFuzzer targets with clang (ASan + UBSan) and runs each for a bounded time.
#   fuzz/run.sh [SECONDS]   (default 20 per target); build and corpora go to build-fuzz/.
#   FUZZ_RUNS=N fuzz/run.sh  runs N executions per target instead (the long run by hand).
# Inputs are capped at 4096 bytes (1024 for the tokenizer, whose work per input grows with its
# length: encode, decode, NFC and the streaming decoder all run on every input).
# Needs clang++ and the fuzzer runtime (Debian: clang, libclang-rt-14-dev) and libpcre2-dev; installs
# them with apt when missing (unless CXX_FUZZ names another compiler).
# Prints one summary line per target with the number of executions; exits non-zero on a crash.
set -euo pipefail
secs=${1:-20}
pkgs=(clang libclang-rt-14-dev libpcre2-dev pkg-config)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})) && [ -z "${CXX_FUZZ:-}" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "fuzz: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build-fuzz
mkdir -p "$out"
cxx=${CXX_FUZZ:-clang++}
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"$root/include" $(pkg-config --cflags libpcre2-8))
libs=($(pkg-config --libs libpcre2-8))

# Seed corpora: small valid files of each format.
python3 - "$out" <<'PY'
import json, os, struct, sys
out = sys.argv[1]
def put(d, name, data):
    os.makedirs(os.path.join(out, d), exist_ok=True)
    with open(os.path.join(out, d, name), "wb") as f: f.write(data)
h = json.dumps({"__metadata__": {"format": "pt"},
                "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}).encode()
h += b" " * (-len(h) % 8)
put("corpus_safetensors", "seed1", struct.pack("<Q", len(h)) + h + bytes(22))
def s(x): x = x.encode(); return struct.pack("<Q", len(x)) + x
kv = s("general.architecture") + struct.pack("<I", 8) + s("llama")
kv += s("n") + struct.pack("<I", 4) + struct.pack("<I", 7)
kv += s("arr") + struct.pack("<I", 9) + struct.pack("<IQ", 8, 2) + s("x") + s("yz")
ti = s("t") + struct.pack("<I", 2) + struct.pack("<QQ", 32, 2) + struct.pack("<I", 8) + struct.pack("<Q", 0)
body = b"GGUF" + struct.pack("<IQQ", 3, 1, 3) + kv + ti
body += bytes(-len(body) % 32)
put("corpus_gguf", "seed1", body + bytes(68))
put("corpus_config", "seed1", json.dumps({"model_type": "deepseek_v3", "vocab_size": 1000, "hidden_size": 64,
    "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "q_lora_rank": 32,
    "kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64}}).encode())
put("corpus_config", "seed2", json.dumps({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rope_parameters": {"rope_type": "llama3", "factor": 8, "original_max_position_embeddings": 8192}}).encode())
voc = {}
tbl = [b for b in range(33, 127)] + [b for b in range(161, 173)] + [b for b in range(174, 256)]
n = 0; cps = {}
for b in range(256):
    if b in tbl: cps[b] = b
    else: cps[b] = 256 + n; n += 1
for b in range(256): voc[chr(cps[b])] = b
voc["th"] = 256
put("corpus_tokenizer", "seed1", json.dumps({"model": {"type": "BPE", "vocab": voc, "merges": ["t h"]},
    "added_tokens": [{"id": 257, "content": "<s>", "special": True}],
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"},
    "behavior": "Isolated", "invert": False}, {"type": "ByteLevel", "use_regex": False}]}}).encode())
put("corpus_tokenizer", "seed2", "the 123 中文分词 <｜User｜>hi</think> ½\n\n  x".encode())
PY

status=0
for t in safetensors gguf config tokenizer; do
  src=$root/fuzz/fuzz_$t.cpp
  bin=$out/fuzz_$t
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ] || [ -n "$(find "$root/include/tmoe/io" -newer "$bin" -print -quit)" ]; then
    "$cxx" "${flags[@]}" "$src" -o "$bin" "${libs[@]}"
  fi
  log=$out/fuzz_$t.log
  maxlen=4096
  [ "$t" = tokenizer ] && maxlen=1024
  limit=(-max_total_time="$secs")
  [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
  if "$bin" "${limit[@]}" -max_len="$maxlen" -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$out/crash_${t}_" "$out/corpus_$t" >"$log" 2>&1; then
    res=ok
  else
    res=CRASH
    status=1
  fi
  execs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "?")
  echo "fuzz_$t: $res, $execs executions in ${took} s, $cov (log: $log)"
done
exit $status
