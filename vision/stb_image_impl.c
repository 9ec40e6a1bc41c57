/* vision/stb_image_impl.c — the one translation unit that compiles stb_image.
 *
 * The header comes from Debian's libstb-dev (/usr/include/stb/stb_image.h);
 * it is not vendored. Everything else in loupe goes through image.c, which
 * reads files itself (hence STBI_NO_STDIO) and checks dimensions with
 * stbi_info_from_memory before any decode.
 *
 * stb's failure reason is a global, but declared STBI_THREAD_LOCAL (v2.26+)
 * when the compiler has thread-locals, which C11 gcc/clang do; the #error
 * below refuses to build a non-thread-safe configuration. image.c reads the
 * reason right after the failing call, on the same thread. */
#include "image.h"

#include <stdlib.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_NO_LINEAR          /* no float API */
/* Formats loupe does not need are compiled out: less code facing hostile
 * input. Debian 12's stb_image 2.27 has known bugs in these decoders (the PNM
 * header parser overflows a signed int, found by our fuzzer; fixed upstream
 * in 2.28), and photos never arrive as PNM/PSD/PIC/HDR. */
#define STBI_NO_PNM
#define STBI_NO_PSD
#define STBI_NO_PIC
#define STBI_NO_HDR
/* stb's own per-side cap, left at its default of 2^24 on purpose: loupe's
 * real limit (LP_IMAGE_MAX_DIM) is applied by image.c to the dimensions that
 * stbi_info_from_memory reports. A lower cap here would make stbi_info fail
 * on a big-but-honest header, and since stbi_info tries every format in turn
 * the reason left behind is "unknown image type" — a FORMAT error where the
 * caller should see LIMIT and the size. */
#define STBI_MAX_DIMENSIONS (1 << 24)
/* Pixel buffers returned by stbi_load_from_memory become lp_image.rgb and are
 * released by lp_image_free() with free(), so pin stb to the C allocator. */
#define STBI_MALLOC(sz) malloc(sz)
#define STBI_REALLOC(p, newsz) realloc(p, newsz)
#define STBI_FREE(p) free(p)
/* stb 2.27 compiles clean under -Wall -Wextra today; these cover the
 * warnings other stb snapshots and compilers have raised, in this file only.
 * -Wpragmas first so gcc does not trip on the clang-only names and back. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Wunknown-warning-option"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

#ifndef STBI_THREAD_LOCAL
#error "stb_image built without thread-local failure reasons; loupe needs them"
#endif
