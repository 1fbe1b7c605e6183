/* The definitions of llmtrain.h compiled as C, for CUDA builds that include the header as declarations
   only (train_gpu.cu and tests/test_gpu.cu built with -DLLMTRAIN_C_IMPL). */
#define LLMTRAIN_IMPLEMENTATION
#include "../../llmtrain.h"
