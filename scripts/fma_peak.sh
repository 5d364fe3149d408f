#!/usr/bin/env bash
# The machine's FP32 FMA peak: each thread runs 12 independent chains of
# 512-bit fused multiply-adds (no memory traffic), timed; prints GFLOP/s in
# all and per core for 1 and 2 threads. The ceiling any product (and so any
# LLM step) can reach here; docs/results/bench-llm compares steps with it.
#
#   scripts/fma_peak.sh            (needs gcc and an AVX-512F CPU)
set -euo pipefail
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cat >"$dir/fma.c" <<'C'
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHAINS 12
#define FMAS 400000000L
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void *chains(void *out) {
  __m512 a[CHAINS], b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
  for (long it = 0; it < FMAS / CHAINS; it++)
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
  float s = 0;
  for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(a[i]);
  *(float *)out = s;
  return 0;
}
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1;
  if (n < 1 || n > 64) return 2;
  pthread_t t[64]; float s[64];
  double t0 = now();
  for (int i = 0; i < n; i++) pthread_create(&t[i], 0, chains, &s[i]);
  for (int i = 0; i < n; i++) pthread_join(t[i], 0);
  double flop = 2.0 * 16 * (FMAS / CHAINS * CHAINS), dt = now() - t0;
  printf("threads=%d gflop_s=%.1f per_core=%.1f (checksum %g)\n", n, flop * n / dt / 1e9, flop / dt / 1e9, s[0]);
  return 0;
}
C
gcc -O2 -mavx512f -o "$dir/fma" "$dir/fma.c" -lpthread
for n in 1 1 2 2; do "$dir/fma" "$n"; done
