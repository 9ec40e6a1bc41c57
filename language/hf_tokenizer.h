/* language/hf_tokenizer.h — a Hugging Face tokenizer directory as GGUF
 * tokenizer metadata, written the way llama.cpp's convert_hf_to_gguf.py
 * writes it (conversion/base.py, _create_vocab_sentencepiece and the BPE
 * path), for `loupe convert --from-hf`.
 *
 * Sources, in order of preference:
 *   tokenizer.model   SentencePiece's ModelProto, read by a small protobuf
 *                     reader of our own (wire types 0, 1, 2, 5; unknown
 *                     fields skipped; every length checked):
 *                       ModelProto.pieces          = 1 (repeated)
 *                         SentencePiece.piece      = 1 (string)
 *                         SentencePiece.score      = 2 (float)
 *                         SentencePiece.type       = 3 (NORMAL 1, UNKNOWN 2, CONTROL 3,
 *                                                      USER_DEFINED 4, BYTE 6, UNUSED 5)
 *                       ModelProto.trainer_spec    = 2: model_type = 3 (UNIGRAM 1, BPE 2),
 *                         byte_fallback = 35, unk_id 40, bos_id 41, eos_id 42, pad_id 43
 *                       ModelProto.normalizer_spec = 3: add_dummy_prefix = 3
 *                     -> tokenizer.ggml.model "llama": tokens, scores, token_type
 *                     (the proto's types), padded to config.json's vocab_size
 *                     with "[PAD<i>]" (UNUSED, score -10000) as llama.cpp does;
 *                     added_tokens.json entries become USER_DEFINED (score
 *                     -1000); tokenizer_config.json's added_tokens_decoder:
 *                     special ones CONTROL, others USER_DEFINED.
 *   tokenizer.json    Hugging Face tokenizers, model.type "BPE": vocab by id,
 *                     merges ("a b" strings or [a, b] pairs), added_tokens
 *                     (special -> CONTROL, else USER_DEFINED). Without
 *                     byte_fallback (GPT-2 style byte-level BPE) ->
 *                     tokenizer.ggml.model "gpt2", pre "default", merges;
 *                     with byte_fallback (LLaMA-2 style) -> "llama": <0xXX>
 *                     pieces BYTE, each merged piece scored -(merge rank) so
 *                     SentencePiece merging follows the merge order.
 * Special ids: trainer_spec's unk/bos/eos/pad ids, then config.json-style
 * bos/eos_token strings of tokenizer_config.json / special_tokens_map.json
 * when they name a token; add_bos_token / add_eos_token from
 * tokenizer_config.json (SentencePiece default: BOS yes, EOS no).
 *
 * Every failure names the file and the reason (a truncated protobuf, a bad
 * wire type, a length past the end, no pieces, an id out of range,
 * malformed JSON, an unsupported model type). Nothing is printed. */
#ifndef LP_HF_TOKENIZER_H
#define LP_HF_TOKENIZER_H

#include "../core/error.h"
#include "../core/gguf.h"

#include <stddef.h>
#include <stdint.h>

typedef struct lp_hf_vocab lp_hf_vocab;

/* vocab_size: config.json's vocab_size (0 if absent): the vocabulary is
 * padded to it, and ids at or past it are dropped. */
loupe_status lp_hf_vocab_load(const char *dir, int vocab_size, lp_hf_vocab **out, lp_error *err);
/* Parse a tokenizer.model held in memory (name for messages). */
loupe_status lp_hf_vocab_load_spm_mem(const uint8_t *buf, size_t n, const char *name, lp_hf_vocab **out,
                                      lp_error *err);
void lp_hf_vocab_free(lp_hf_vocab *v);

int lp_hf_vocab_size(const lp_hf_vocab *v);
const char *lp_hf_vocab_model(const lp_hf_vocab *v); /* "llama" or "gpt2" */
const char *lp_hf_vocab_token(const lp_hf_vocab *v, int id);
float lp_hf_vocab_score(const lp_hf_vocab *v, int id);
int lp_hf_vocab_type(const lp_hf_vocab *v, int id);  /* llama_token_type: 1 normal .. 6 byte */
int lp_hf_vocab_special(const lp_hf_vocab *v, const char *which); /* "bos" "eos" "unk" "pad": id or -1 */

/* Set every tokenizer.ggml.* key on w. */
loupe_status lp_hf_vocab_write_gguf(const lp_hf_vocab *v, lp_gguf_writer *w, lp_error *err);

#endif
