#!/bin/sh
# emu_source.sh IN OUT — the CUDA source IN as plain C++ for the emulation (tests/cuda_emu/README.md):
#   kernel<<<grid, block, smem, stream>>>(args);     -> emu_launch([&]() { kernel(args); }, (const void *)kernel, "kernel",
#                                                                 grid, block, smem, stream);
#   extern __shared__ T name[];                      -> T *name = (T *)emu_dynamic_smem();
#   a device function whose body is one asm statement -> its body calls emu_<function>(its parameters)
#   #include "../train_gpu.cu"                        -> #include "train_gpu.cu" (the rewritten copy beside it)
# Nothing else changes, so a line number in a report is the line in IN.
set -e
perl -0777 -pe '
  s{([A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\)\s*;}{emu_launch([&]() { $1($3); }, (const void *)$1, "$1", $2);}gs;
  s{extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\s*\[\s*\]\s*;}{$1 *$2 = ($1 *)emu_dynamic_smem();}g;
  s{(__device__[^{};]*?\b(\w+)\s*\(([^)]*)\)\s*)\{(\s*asm\s+volatile\s*\([\s\S]*?\)\s*;\s*)\}}{
      my ($head, $name, $params, $body) = ($1, $2, $3, $4);
      my @args = map { /(\w+)\s*(?:\[[^\]]*\])*\s*$/ ? $1 : () } split /,/, $params;
      my $nl = () = $body =~ /\n/g;
      $head . "{ emu_$name(" . join(", ", @args) . "); " . ("\n" x $nl) . "}"
  }ge;
  s{#include\s+"\.\./train_gpu\.cu"}{#include "train_gpu.cu"}g;
' "$1" > "$2"
