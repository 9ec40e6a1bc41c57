/* fusion/hf_convert.h — a Hugging Face checkpoint directory to loupe's GGUF
 * pair (`loupe convert --from-hf DIR OUT-PREFIX`).
 *
 * Reads DIR/config.json (cJSON), the safetensors weights (one file or
 * sharded, F32/F16/BF16; core/safetensors.h) and the tokenizer
 * (tokenizer.model or tokenizer.json, language/hf_tokenizer.h), and writes
 *
 *   PREFIX.gguf         general.architecture "llama" (LlamaForCausalLM,
 *                       FERRETLlamaForCausalLM, LlavaLlamaForCausalLM: every
 *                       checkpoint whose decoder is a llama), tensor names,
 *                       keys and the Wq/Wk row permutation of llama.cpp's
 *                       convert_hf_to_gguf.py (HF's rotate-half RoPE becomes
 *                       ggml's adjacent-pair NORMAL RoPE)
 *   PREFIX-mmproj.gguf  when config.json has mm_vision_tower: the CLIP tower
 *                       in llama.cpp's llava conventions (class token, pre-LN,
 *                       the layers up to mm_vision_select_layer only, with
 *                       clip.vision.feature_layer stating it; fc1 -> ffn_up,
 *                       fc2 -> ffn_down), the projector (mm_projector_type
 *                       "linear" — Ferret — or "mlp2x_gelu" -> "mlp"), and
 *                       Ferret's region sampler (model.region_geo_sampler.*,
 *                       see fusion/region_sampler.h) with
 *                       clip.vision.region.ferret_transpose = true.
 *
 * Weight mapping (HF name -> GGUF name, HF shape (out, in) -> ne [in, out]):
 *   model.embed_tokens.weight                  token_embd.weight
 *   model.layers.L.input_layernorm.weight      blk.L.attn_norm.weight
 *   model.layers.L.self_attn.{q,k}_proj.weight blk.L.attn_{q,k}.weight  (rows permuted per head)
 *   model.layers.L.self_attn.v_proj.weight     blk.L.attn_v.weight
 *   model.layers.L.self_attn.o_proj.weight     blk.L.attn_output.weight
 *   model.layers.L.post_attention_layernorm.w  blk.L.ffn_norm.weight
 *   model.layers.L.mlp.{gate,up,down}_proj.w   blk.L.ffn_{gate,up,down}.weight
 *   model.norm.weight, lm_head.weight          output_norm.weight, output.weight
 *   CLIP (prefix "vision_model." in a CLIP checkpoint, or
 *   "model.vision_tower.vision_tower.vision_model." inside the checkpoint):
 *   embeddings.class_embedding / patch_embedding / position_embedding
 *                                              v.class_embd / v.patch_embd / v.position_embd
 *   pre_layrnorm                               v.pre_ln
 *   encoder.layers.L.self_attn.{q,k,v,out}_proj v.blk.L.attn_{q,k,v,out}
 *   encoder.layers.L.layer_norm{1,2}           v.blk.L.ln{1,2}
 *   encoder.layers.L.mlp.fc{1,2}               v.blk.L.ffn_{up,down}
 *   model.mm_projector.{weight,bias} ("linear") mm.0;  model.mm_projector.{0,2}.* ("mlp2x_gelu") mm.0, mm.2
 *   model.region_geo_sampler.*                 mm.region.* (load_ferret_state_dict in
 *                                              tools/reference/region_sampler.py has the list)
 *
 * Types: --outtype for every decoder matrix (a row length the type cannot
 * hold falls back to q4_0, then f16); norms, biases and embeddings of the
 * tower f32; the mmproj's matrices f32 with --outtype f32 and f16 otherwise
 * (llama.cpp's mmproj files are f16 too); the patch kernel f16.
 *
 * Output is produced tensor by tensor while each file is written
 * (lp_gguf_writer_add_tensor_fn), so a 7B conversion needs little memory;
 * each file appears complete or not at all (core/fileio.h). */
#ifndef LP_HF_CONVERT_H
#define LP_HF_CONVERT_H

#include "../core/error.h"
#include "../core/types.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct lp_hf_convert_params {
    lp_type outtype;        /* F32, F16, Q8_0, Q4_0 or Q4_K (default F16) */
    const char *vision_dir; /* CLIP checkpoint directory; NULL: the tower inside DIR, or
                             * config.json's mm_vision_tower when it names a local directory */
    bool force;             /* overwrite existing output files */
} lp_hf_convert_params;

lp_hf_convert_params lp_hf_convert_default_params(void);

typedef struct lp_hf_convert_report {
    char kind[32];          /* "ferret", "llava", "llama" */
    int n_tensors_lm, n_tensors_mmproj;
    uint64_t bytes_lm, bytes_mmproj; /* tensor data written */
    int n_fallback;         /* decoder matrices written in a fallback type */
    bool wrote_mmproj;
} lp_hf_convert_report;

/* Convert DIR to PREFIX.gguf (+ PREFIX-mmproj.gguf). rep may be NULL. Every
 * failure names the file and, where one is at fault, the tensor or key:
 * a missing or truncated shard, a missing tensor, a tensor of the wrong
 * shape or of a dtype other than F32/F16/BF16, a config.json without the
 * needed keys, an unsupported architecture. */
loupe_status lp_hf_convert(const char *dir, const char *out_prefix, const lp_hf_convert_params *p,
                           lp_hf_convert_report *rep, lp_error *err);

#endif
