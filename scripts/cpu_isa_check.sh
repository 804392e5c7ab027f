#!/usr/bin/env bash
# Usage (e.g. on the GPU machine, whose Xeon has AVX-512 VNNI and BF16; carry xsimd headers in
# XSIMD_INC): XSIMD_INC=.dev/avx scripts/cpu_isa_check.sh
# Builds the CPU test suites (backend, quant, layers, core) with CPU dispatch and runs them on this
# machine's CPU, so the AVX-512 / AVX-512 VNNI+BF16 kernels get exercised.
set -u
grep -o -w 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
lscpu | grep "Model name"
I="-Iinclude -Itests -I${XSIMD_INC:-/usr/include} -I/usr/include/eigen3 -DTMOE_CPU_DISPATCH=1 -DTMOE_TEST_DATA_DIR=\"$PWD/tests/data\" -std=c++20 -O2 -w"
B="-march=x86-64 -mtune=generic"; A2="$B -mavx2 -mfma -mf16c -mbmi2"; A5="$A2 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512cd"
mkdir -p /tmp/o
g++ $I $B -c src/cpu_isa/isa_portable.cpp -o /tmp/o/p.o &
g++ $I $A2 -c src/cpu_isa/isa_avx2.cpp -o /tmp/o/a2.o &
g++ $I $A5 -c src/cpu_isa/isa_avx512.cpp -o /tmp/o/a5.o &
g++ $I $A5 -mavx512vnni -mavx512bf16 -c src/cpu_isa/isa_avx512_vnni_bf16.cpp -o /tmp/o/a5v.o &
g++ $I -c tests/test_main.cpp -o /tmp/o/main.o &
for d in backend quant layers; do for f in tests/$d/*.cpp; do g++ $I -c $f -o /tmp/o/${d}_$(basename $f).o & done; done
wait
for d in backend quant layers; do
  objs=$(for f in tests/$d/*.cpp; do echo /tmp/o/${d}_$(basename $f).o; done)
  g++ -o /tmp/o/test_$d $objs /tmp/o/main.o /tmp/o/p.o /tmp/o/a2.o /tmp/o/a5.o /tmp/o/a5v.o -pthread && echo "built test_$d"
done
for d in backend quant layers; do echo "== test_$d"; /tmp/o/test_$d 2>&1 | tail -4; done
for d in backend quant layers; do echo "== test_$d, AVX-512 subcases only"; /tmp/o/test_$d --subcase="avx512*" 2>&1 | tail -3; done
