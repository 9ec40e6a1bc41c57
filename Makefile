# loupe — one Makefile, no CMake.
#
#   make            build libloupe.a, libloupe.so and the loupe binary
#   make demo       install missing Debian packages, build, run the demo
#   make test       install missing Debian packages, build, run every cmocka suite
#                   (plus a short fuzz smoke run when clang is installed)
#   make asan       tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make tsan       tests under ThreadSanitizer
#   make fuzz       libFuzzer targets (clang) in build/fuzz/
#   make bench      benchmarks bench/*.c against the library, in $(BUILD)/bench/ (not run)
#   make examples   examples/*.c against $(BUILD)/libloupe.a, public header only, in $(BUILD)/examples/
#   make abi-test   install into a temporary prefix, build examples/*.c with only that prefix
#                   and pkg-config, run photo_search with the shipped model on 10 synthetic scenes (part of `make test`)
#   make install PREFIX=/usr/local
#
# Options: PORTABLE=1 for a generic x86-64 build instead of -march=native.

SHELL    := /bin/bash
PREFIX   ?= /usr/local
PORTABLE ?= 0
BUILD    ?= build
SAN      ?=
TEST_ENV ?=
# fuzz smoke runs in `make test`: a fixed seed and count, so CI is reproducible
FUZZ_RUNS ?= 3000
CC       ?= cc
CLANG    ?= clang

ifeq ($(PORTABLE),1)
ARCH_FLAGS := -march=x86-64 -mtune=generic
else
ARCH_FLAGS := -march=native
endif

PKGS      := openblas libpng libcjson
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS = $(shell pkg-config --libs cmocka 2>/dev/null || echo -lcmocka)

OPT      := -O2
ifneq ($(SAN),)
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=$(SAN) -fno-sanitize-recover=all
endif

CPPFLAGS += -Iinclude -Icore -D_GNU_SOURCE
CFLAGS   += -std=c11 $(OPT) $(ARCH_FLAGS) -Wall -Wextra -Werror -fPIC -pthread $(PKG_CFLAGS)
LDFLAGS  += -pthread $(if $(SAN),-fsanitize=$(SAN))
LDLIBS   += $(PKG_LIBS) -lm

LIB_SRC  := $(sort $(wildcard core/*.c vision/*.c fusion/*.c language/*.c datasets/*.c))
CLI_SRC  := $(sort $(wildcard cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_SUPPORT := $(sort $(wildcard tests/support/*.c))
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
# Developer tools built with the library (tools/llamacpp/ holds programs that
# link a hand-built llama.cpp instead; they are never built here).
TOOL_SRC := $(sort $(wildcard tools/*.c))
BENCH_SRC := $(sort $(wildcard bench/*.c))
EX_SRC   := $(sort $(wildcard examples/*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
SUP_OBJ  := $(TEST_SUPPORT:%.c=$(BUILD)/obj/%.o)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
FUZZERS  := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
TOOLS    := $(TOOL_SRC:tools/%.c=$(BUILD)/tools/%)
BENCHES  := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
EXAMPLES := $(EX_SRC:examples/%.c=$(BUILD)/examples/%)

LIB_A    := $(BUILD)/libloupe.a
LIB_SO   := $(BUILD)/libloupe.so
LOUPE    := $(BUILD)/loupe

.PHONY: all deps demo test check asan tsan fuzz fuzz-smoke bench examples abi-test install uninstall clean
.DEFAULT_GOAL := all

all: $(LIB_A) $(LIB_SO) $(LOUPE) $(TOOLS)

# The Debian packages are checked (and installed when root) before anything is compiled.
deps:
	@sh tools/deps.sh

NPROC := $(shell nproc 2>/dev/null || echo 2)

demo: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	@sh tools/demo.sh $(LOUPE)

test: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all $(TESTS)
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory abi-test
	@$(MAKE) --no-print-directory fuzz-smoke

# Build and run every suite; a failing suite fails the target after all have run.
check: all $(TESTS)
	@fail=0; for t in $(TESTS); do \
	  echo "== $$t"; env $(TEST_ENV) $$t || { echo "FAILED: $$t"; fail=1; }; \
	done; \
	if [ $$fail -ne 0 ]; then echo "some test suites FAILED"; exit 1; fi; \
	echo "all $(words $(TESTS)) test suites passed"

asan: deps
	@$(MAKE) --no-print-directory -j$(NPROC) BUILD=build/asan SAN=address,undefined all $(TESTS:build/%=build/asan/%)
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=address,undefined check

tsan: deps
	@$(MAKE) --no-print-directory -j$(NPROC) BUILD=build/tsan SAN=thread all $(TESTS:build/%=build/tsan/%)
	@# OpenBLAS's own threads are not instrumented, so TSan cannot see their
	@# synchronisation; run sgemm single-threaded and test loupe's threads.
	@$(MAKE) --no-print-directory BUILD=build/tsan SAN=thread TEST_ENV="OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1" check

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB_A): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIB_SO): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libloupe.so.0 $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(LOUPE): $(CLI_OBJ) $(LIB_A)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(LIB_A) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(SUP_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(SUP_OBJ) $(LIB_A) $(CMOCKA_LIBS) $(LDLIBS)

$(BUILD)/tools/%: $(BUILD)/obj/tools/%.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB_A) $(LDLIBS)

# ---- benchmarks: built, not run ($(BUILD)/bench/bench_kernels [all|attn|<type>]) ----
bench: $(BENCHES)
$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB_A) $(LDLIBS)

# ---- examples: only include/loupe.h, linked as an installed user links
# (libloupe.a + its Libs.private, i.e. `pkg-config --libs --static loupe`) ----
EX_CFLAGS = -std=c11 $(OPT) -Wall -Wextra -Werror -pthread $(if $(SAN),-fsanitize=$(SAN))
examples: $(EXAMPLES)
$(BUILD)/examples/%: examples/%.c include/loupe.h $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(EX_CFLAGS) -Iinclude -o $@ $< $(LIB_A) $(PKG_LIBS) -lm -pthread

# ---- ABI test: what a user of an installed loupe sees. Install into a fresh
# prefix, compile each example there with nothing but that prefix's header and
# `pkg-config --cflags --libs loupe` (the shared library), and run
# photo_search on 3 synthetic scenes with the tiny random-weight pair (its
# boxes mean nothing; the program must run and write every output). ----
ABI_LM     := models/loupe-tiny.gguf
ABI_MMPROJ := models/loupe-tiny-mmproj.gguf
abi-test: all
	@set -e; d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	$(MAKE) --no-print-directory install PREFIX=$$d/prefix >/dev/null; \
	export PKG_CONFIG_PATH=$$d/prefix/lib/pkgconfig; \
	flags=$$(pkg-config --cflags --libs loupe); \
	for src in $(EX_SRC); do \
	  n=$$(basename $$src .c); cp $$src $$d/$$n.c; \
	  (cd $$d && $(CC) -std=c11 -Wall -Wextra -Werror $$n.c $$flags -o $$n); \
	  echo "== abi-test: built $$n with $$flags"; \
	done; \
	LD_LIBRARY_PATH=$$d/prefix/lib ldd $$d/photo_search | grep -q "$$d/prefix/lib/libloupe.so.0"; \
	$(LOUPE) synth --seed 1 --n 10 --out $$d/scenes >/dev/null; \
	LD_LIBRARY_PATH=$$d/prefix/lib $$d/photo_search -m $(ABI_LM) --mmproj $(ABI_MMPROJ) -t 1 \
	    "the red chair" $$d/scenes/images $$d/out; \
	test $$(ls $$d/out/*.png | wc -l) -eq 10; \
	if command -v python3 >/dev/null; then python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["images"]) == 10 and all("error" not in i for i in d["images"])' $$d/out/index.json; fi; \
	echo "abi-test passed: 10 annotated PNGs and index.json written by an example built from the installed prefix"

# ---- fuzzing (clang + libFuzzer); the library is rebuilt with coverage ----
FUZZ_FLAGS := -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Iinclude -Icore -D_GNU_SOURCE $(PKG_CFLAGS)
fuzz: $(FUZZERS)
build/fuzz/%: tests/fuzz/%.c $(LIB_SRC)
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -o $@ $< $(LIB_SRC) $(PKG_LIBS) -lm -pthread

# A short, deterministic run per target over the committed seeds (fresh corpus
# each time); skipped without clang.
fuzz-smoke:
	@if command -v $(CLANG) >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory fuzz && \
	  for f in $(FUZZERS); do \
	    n=$$(basename $$f); rm -rf build/fuzz/corpus-$$n; mkdir -p build/fuzz/corpus-$$n; \
	    echo "== fuzz smoke $$n ($(FUZZ_RUNS) runs, seed 1)"; \
	    $$f -seed=1 -runs=$(FUZZ_RUNS) -max_total_time=60 -print_final_stats=1 build/fuzz/corpus-$$n tests/fuzz/seeds/$${n#fuzz_} 2>&1 | grep -E "stat::number_of_executed_units|ERROR|SUMMARY" ; \
	    test $${PIPESTATUS:-0} -eq 0 || exit 1; \
	  done; \
	else echo "clang not installed: fuzz smoke run skipped (apt-get install clang)"; fi

# ---- install ----
install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/loupe.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(LIB_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIB_SO) $(DESTDIR)$(PREFIX)/lib/libloupe.so.0
	ln -sf libloupe.so.0 $(DESTDIR)$(PREFIX)/lib/libloupe.so
	install -m 755 $(LOUPE) $(DESTDIR)$(PREFIX)/bin/
	@# the shipped model: `loupe ask`/`eval` find it in ../share/loupe/models beside the binary
	install -d $(DESTDIR)$(PREFIX)/share/loupe/models
	install -m 644 $(wildcard models/loupe-tiny*.gguf) $(DESTDIR)$(PREFIX)/share/loupe/models/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(shell sed -n 's/^#define LOUPE_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)/\2/p' include/loupe.h | paste -sd.)|' \
	    -e 's|@PRIVATE_LIBS@|$(PKG_LIBS) -lm -pthread|' tools/loupe.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/loupe.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/loupe.h $(DESTDIR)$(PREFIX)/lib/libloupe.a \
	      $(DESTDIR)$(PREFIX)/lib/libloupe.so $(DESTDIR)$(PREFIX)/lib/libloupe.so.0 \
	      $(DESTDIR)$(PREFIX)/bin/loupe $(DESTDIR)$(PREFIX)/lib/pkgconfig/loupe.pc
	rm -rf $(DESTDIR)$(PREFIX)/share/loupe

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(SUP_OBJ:.o=.d) $(TEST_SRC:tests/%.c=$(BUILD)/obj/tests/%.d) $(BENCH_SRC:bench/%.c=$(BUILD)/obj/bench/%.d)
