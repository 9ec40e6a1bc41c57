/* core/types.h — tensor element types, with ggml's numbering and block layouts.
 *
 * The enum values are ggml's `enum ggml_type` values, because GGUF files store
 * them verbatim. Every ggml type is named (so `loupe info` can describe any
 * file), but only the types with lp_type_can_dequantize() can be computed on.
 *
 * Quantized types store blocks of lp_type_block_size() elements in
 * lp_type_block_bytes() bytes. Rows must be a whole number of blocks. */
#ifndef LP_TYPES_H
#define LP_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum lp_type {
    LP_TYPE_F32 = 0,
    LP_TYPE_F16 = 1,
    LP_TYPE_Q4_0 = 2,
    LP_TYPE_Q4_1 = 3,
    /* 4 and 5 were Q4_2/Q4_3, removed from ggml */
    LP_TYPE_Q5_0 = 6,
    LP_TYPE_Q5_1 = 7,
    LP_TYPE_Q8_0 = 8,
    LP_TYPE_Q8_1 = 9,
    LP_TYPE_Q2_K = 10,
    LP_TYPE_Q3_K = 11,
    LP_TYPE_Q4_K = 12,
    LP_TYPE_Q5_K = 13,
    LP_TYPE_Q6_K = 14,
    LP_TYPE_Q8_K = 15,
    LP_TYPE_IQ2_XXS = 16,
    LP_TYPE_IQ2_XS = 17,
    LP_TYPE_IQ3_XXS = 18,
    LP_TYPE_IQ1_S = 19,
    LP_TYPE_IQ4_NL = 20,
    LP_TYPE_IQ3_S = 21,
    LP_TYPE_IQ2_S = 22,
    LP_TYPE_IQ4_XS = 23,
    LP_TYPE_I8 = 24,
    LP_TYPE_I16 = 25,
    LP_TYPE_I32 = 26,
    LP_TYPE_I64 = 27,
    LP_TYPE_F64 = 28,
    LP_TYPE_IQ1_M = 29,
    LP_TYPE_BF16 = 30,
    /* 31..33 removed from ggml */
    LP_TYPE_TQ1_0 = 34,
    LP_TYPE_TQ2_0 = 35,
    /* 36..38 removed from ggml */
    LP_TYPE_MXFP4 = 39,
    LP_TYPE_COUNT = 40
} lp_type;

#define LP_QK_K 256 /* super-block size of the K-quants */

/* "f32", "q4_K", ... ; NULL for a number that is not a ggml type. */
const char *lp_type_name(uint32_t t);
/* Parse a name as printed by lp_type_name (case-insensitive); -1 if unknown. */
int lp_type_from_name(const char *name);
/* true if t names a ggml type whose block layout loupe knows (all named types). */
bool lp_type_valid(uint32_t t);
/* Elements per block (1 for plain types) and bytes per block. 0 if !valid. */
int64_t lp_type_block_size(lp_type t);
size_t lp_type_block_bytes(lp_type t);
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t lp_row_size(lp_type t, int64_t n);

bool lp_type_can_dequantize(lp_type t); /* F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q4_K Q5_K Q6_K */
bool lp_type_can_quantize(lp_type t);   /* F32 F16 BF16 Q8_0 Q4_0 Q4_K */

/* Convert n elements (a multiple of the block size) of type t at src to f32.
 * Returns false (and writes nothing) if t cannot be dequantized or n is not
 * a multiple of the block size. Bit-exact with ggml's to_float. */
bool lp_dequantize_row(lp_type t, const void *src, float *dst, int64_t n);

/* Quantize n floats into type t. Returns bytes written, 0 on the same
 * failures as above. Matches ggml's reference quantizers (quantize_row_*_ref). */
size_t lp_quantize_row(lp_type t, const float *src, void *dst, int64_t n);

/* Scalar conversions, IEEE round-to-nearest-even like ggml's. */
float lp_f16_to_f32(uint16_t h);
uint16_t lp_f32_to_f16(float f);
float lp_bf16_to_f32(uint16_t h);
uint16_t lp_f32_to_bf16(float f);

#endif
