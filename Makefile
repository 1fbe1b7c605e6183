# llmtrain — build, run, test.
#   make        build train and prepro (and train_gpu when nvcc is present)
#   make run    install missing packages (as root), build, preprocess the bundled corpus, train, sample
#   make test   build and run the whole test suite (no GPU, no Python)
#   make test-sanitize   the same suite with every program built under ASan + UBSan, leaks checked

CC      ?= gcc
OPT     ?= -O3 -march=native
CFLAGS  += $(OPT) -std=c11 -fno-math-errno -Wall -Wextra -Wno-unused-parameter -Wno-unused-function -fopenmp -D_GNU_SOURCE
LDLIBS  += -lm -ljansson -lpcre2-8 -lz -lzstd -lsnappy
DEB_PKGS = gcc make libpcre2-dev libjansson-dev zlib1g-dev libzstd-dev libsnappy-dev libgomp1

TOKENIZER = prepro/tokenizer.c prepro/tokenizer.h prepro/unicode_tables.h prepro/unicode_props.h

# the GPU trainer is compiled wherever nvcc is (it runs only where a GPU is)
NVCC      ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_ARCH ?= sm_90
NVFLAGS   ?= -O3 -arch=$(CUDA_ARCH) -std=c++17 -Xcompiler -fopenmp -D_GNU_SOURCE
NVLIBS     = -lcublas -lcublasLt -lnccl -ljansson -lpcre2-8 -lz -lzstd -lm -lgomp
GPU_BINS   = $(if $(NVCC),$(if $(wildcard train_gpu.cu),train_gpu))

# B: where the programs go, with the same layout as here (empty: in place; build/san/ for test-sanitize)
B ?=

.PHONY: all deps run test test-bins test-sanitize test-gpu test-gpu-emu bench plot fuzz clean

all: $(B)train $(B)prepro/prepro $(GPU_BINS)

# $(call apt_install,PACKAGES): installs them (as root) with one line of output; apt's own output goes to
# APT_LOG, whose last lines are shown if it fails
APT_LOG = $${TMPDIR:-/tmp}/llmtrain-apt.log
apt_install = echo "installing$(1) (apt-get output: $(APT_LOG))"; \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); } > $(APT_LOG) 2>&1 \
	|| { tail -n 20 $(APT_LOG); echo "apt-get failed: see $(APT_LOG)"; exit 1; }

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then $(call apt_install,$$missing); \
	  else echo "missing Debian packages:$$missing (run as root, or install them)"; exit 1; fi; fi

$(B)train: train.c train_common.h train_loop.h flags.h llmtrain.h $(TOKENIZER)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ train.c prepro/tokenizer.c $(LDLIBS)

PARQUET = prepro/parquet.c prepro/parquet.h prepro/arrow.c prepro/arrow.h prepro/file_io.h

$(B)prepro/prepro: prepro/prepro.c flags.h $(TOKENIZER) $(PARQUET)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ prepro/prepro.c prepro/tokenizer.c prepro/parquet.c prepro/arrow.c $(LDLIBS)

# ---- the default run: bundled corpus -> .bin/.idx -> a small GPT-2 on the CPU -> sample. The schedule
# (peak lr 2e-3 after 50 warmup steps) trains without the loss spike a 3e-3 peak after 20 steps gives; a step
# line every 5 steps shows such a spike if one comes.
RUN_DIR ?= out/run
run: deps all
	@mkdir -p out
	./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph --tokenizer data/gpt2_tokenizer.json \
	    --output-prefix out/tinyshakespeare --append-eod
	@if [ -x ./train_gpu ] && nvidia-smi -L >/dev/null 2>&1; then echo "GPU found: training with ./train_gpu"; fi
	$$( [ -x ./train_gpu ] && nvidia-smi -L >/dev/null 2>&1 && echo ./train_gpu || echo ./train ) \
	    --data out/tinyshakespeare_text_document --model tiny-gpt2 --tokenizer data/gpt2_tokenizer.json \
	    --batch-size 8 --seq-len 64 --steps 400 --lr 2e-3 --warmup-steps 50 --split 95,5,0 --log-every 5 \
	    --eval-every 100 --eval-steps 8 --sample-every 400 --sample-len 96 --out $(RUN_DIR)

train_gpu: train_gpu.cu train_common.h train_loop.h dist.h flags.h llmtrain.h $(TOKENIZER)
	$(NVCC) $(NVFLAGS) -o $@ train_gpu.cu prepro/tokenizer.c $(NVLIBS)

# ---- tests
TEST_BINS = $(addprefix $(B)tests/bin/,test_layers test_model test_data test_tokenizer test_columnar test_comm test_sample test_schedule st_maxdiff)

$(B)tests/bin/%: tests/%.c tests/test_util.h llmtrain.h $(TOKENIZER) $(PARQUET)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Itests -I. -o $@ $< prepro/tokenizer.c prepro/parquet.c prepro/arrow.c $(LDLIBS)

$(B)tests/bin/test_sample: train_common.h flags.h
$(B)tests/bin/test_schedule: train_common.h flags.h

# the GPU test program: its host checks run in `make test` wherever nvcc is; its device checks need a GPU
GPU_TEST_BINS = $(if $(GPU_BINS),tests/bin/test_gpu)
tests/bin/test_gpu: tests/test_gpu.cu train_gpu.cu train_common.h train_loop.h dist.h flags.h llmtrain.h $(TOKENIZER)
	@mkdir -p tests/bin
	$(NVCC) $(NVFLAGS) -Itests -I. -o $@ tests/test_gpu.cu prepro/tokenizer.c $(NVLIBS)

# ---- the GPU code on the CPU: train_gpu.cu and test_gpu.cu rewritten (emu_source.sh) and compiled with g++
# against the CUDA emulation in tests/cuda_emu (README: "The GPU code without a GPU"). The code under test is
# compiled with gcc's kernel-address instrumentation, each access a call into the emulation's checks.
EMU       = tests/cuda_emu
EMU_BIN   = tests/bin/emu
EMU_CXX   = g++ -std=c++17 -O1 -g -march=native -fno-strict-aliasing -fopenmp -D_GNU_SOURCE -rdynamic -I$(EMU) -I.
EMU_CHECK = -fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0 --param asan-stack=0 \
            --param asan-globals=0 -fsanitize=alignment
EMU_OBJS  = $(EMU_BIN)/emu_runtime.o $(EMU_BIN)/emu_cublaslt.o $(EMU_BIN)/emu_nccl.o $(EMU_BIN)/tokenizer.o
EMU_HDRS  = Makefile $(EMU)/emu_core.h $(EMU)/cuda_runtime.h $(EMU)/cuda_bf16.h $(EMU)/cublasLt.h $(EMU)/nccl.h
EMU_TESTS = tests/bin/test_cuda_emu tests/bin/test_emu_libs $(EMU_BIN)/test_gpu_emu $(EMU_BIN)/train_gpu_emu

$(EMU_BIN)/%.cu: %.cu $(EMU)/emu_source.sh
	@mkdir -p $(EMU_BIN)
	$(EMU)/emu_source.sh $< $@
$(EMU_BIN)/test_gpu.cu: tests/test_gpu.cu $(EMU)/emu_source.sh
	@mkdir -p $(EMU_BIN)
	$(EMU)/emu_source.sh $< $@
$(EMU_BIN)/test_cuda_emu.cu: $(EMU)/test_cuda_emu.cu $(EMU)/emu_source.sh
	@mkdir -p $(EMU_BIN)
	$(EMU)/emu_source.sh $< $@
$(EMU_BIN)/%.o: $(EMU)/%.cpp $(EMU_HDRS)
	@mkdir -p $(EMU_BIN)
	$(EMU_CXX) -O2 -c -o $@ $<
$(EMU_BIN)/tokenizer.o: $(TOKENIZER)
	@mkdir -p $(EMU_BIN)
	$(CC) $(CFLAGS) -c -o $@ prepro/tokenizer.c
$(EMU_BIN)/test_gpu_emu: $(EMU_BIN)/test_gpu.cu $(EMU_BIN)/train_gpu.cu $(EMU_OBJS) $(EMU_HDRS) train_common.h train_loop.h dist.h flags.h llmtrain.h
	$(EMU_CXX) $(EMU_CHECK) -x c++ -c -o $@.o $(EMU_BIN)/test_gpu.cu
	$(EMU_CXX) -o $@ $@.o $(EMU_OBJS) $(LDLIBS) -lpthread -lrt
$(EMU_BIN)/train_gpu_emu: $(EMU_BIN)/train_gpu.cu $(EMU_OBJS) $(EMU_HDRS) train_common.h train_loop.h dist.h flags.h llmtrain.h
	$(EMU_CXX) $(EMU_CHECK) -x c++ -c -o $@.o $(EMU_BIN)/train_gpu.cu
	$(EMU_CXX) -o $@ $@.o $(EMU_OBJS) $(LDLIBS) -lpthread -lrt
tests/bin/test_cuda_emu: $(EMU_BIN)/test_cuda_emu.cu $(EMU_OBJS) $(EMU_HDRS)
	$(EMU_CXX) $(EMU_CHECK) -x c++ -c -o $(EMU_BIN)/test_cuda_emu.o $(EMU_BIN)/test_cuda_emu.cu
	$(EMU_CXX) -o $@ $(EMU_BIN)/test_cuda_emu.o $(EMU_OBJS) $(LDLIBS) -lpthread -lrt

# the cuBLASLt and NCCL emulations against plain references (their memory checks stubbed)
tests/bin/test_emu_libs: $(EMU)/test_emu_libs.cpp $(EMU)/emu_cublaslt.cpp $(EMU)/emu_nccl.cpp $(EMU_HDRS)
	$(EMU_CXX) -O2 -DEMU_LIBS_STANDALONE -o $@ $(EMU)/test_emu_libs.cpp $(EMU)/emu_cublaslt.cpp $(EMU)/emu_nccl.cpp -lpthread -lrt

# the emulated GPU tests in full (make test runs the --quick set and the multi-rank runs)
test-gpu-emu: $(EMU_TESTS) all
	./tests/bin/test_cuda_emu && ./$(EMU_BIN)/test_gpu_emu && EMU_FULL=1 bash tests/test_gpu_emu.sh

$(B)tests/bin/st_maxdiff: tests/tools/st_maxdiff.c llmtrain.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -I. -o $@ $< $(LDLIBS)

test-bins: $(TEST_BINS)

# test_resume.sh kills saves at chosen system calls with strace; the emulated GPU tests need g++
test: DEB_PKGS += strace g++
test: deps all test-bins $(GPU_TEST_BINS) $(EMU_TESTS)
	@bash tests/run.sh

# The whole suite again with train, prepro and the C test programs built into build/san/ under AddressSanitizer
# (with LeakSanitizer) and UndefinedBehaviorSanitizer; tests/run.sh runs the programs under BIN_DIR. Any leak,
# bad access or undefined behaviour fails the test that hit it. tests/lsan.supp silences leaks inside system
# libraries only. The CUDA test program is not built here: its host code is the same C as train's.
# TEST_SHORT=1 shortens the longest training run of tests/test_train.sh (the sanitized programs are ~10x slower).
SAN_DIR  = build/san
SAN_OPT  = -O1 -g -march=native -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
test-sanitize: deps
	@$(MAKE) --no-print-directory B=$(SAN_DIR)/ OPT="$(SAN_OPT)" GPU_BINS= all test-bins
	@BIN_DIR=$(SAN_DIR) TEST_SHORT=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
	    LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 bash tests/run.sh

# GPU tests: skipped with a message where there is no GPU
test-gpu: all
	@if [ -z "$(NVCC)" ]; then echo "test-gpu: no nvcc: skipped"; exit 0; fi; \
	$(MAKE) tests/bin/test_gpu && ./tests/bin/test_gpu

# loss curves of a run folder (RUN, default the run of `make run`) to RUN/loss.png, with gnuplot
RUN ?= $(RUN_DIR)
plot:
	@command -v gnuplot >/dev/null || { [ "$$(id -u)" = 0 ] && { $(call apt_install, gnuplot-nox); }; } || { echo "plot needs gnuplot"; exit 1; }
	bash dev/plot.sh $(RUN)

# speed: the CPU step of GPT-2 124M at B=4, T=64 (llm.c's CPU configuration) and of tiny-gpt2 at 1 and 2 threads,
# side by side with PyTorch and llm.c; the matmul against the FMA peak and the other layers (dev/bench_kernels.c)
bench: all out/bench_kernels
	bash dev/bench_cpu.sh

out/bench_kernels: dev/bench_kernels.c llmtrain.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -I. -o $@ dev/bench_kernels.c $(LDLIBS)

# libFuzzer targets (clang, ASan + UBSan) for the tokenizer, tokenizer.json, .idx, safetensors and config.json
# readers, each for FUZZ_SECONDS (default 60)
fuzz:
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && { $(call apt_install, clang libclang-rt-14-dev); }; } || { echo "fuzz needs clang"; exit 1; }
	bash dev/fuzz.sh

# build outputs only: runs and preprocessed data in out/ stay (rm -rf out removes them)
clean:
	rm -rf train prepro/prepro train_gpu tests/bin tests/tmp build
