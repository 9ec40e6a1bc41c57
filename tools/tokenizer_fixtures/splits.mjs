// splits.mjs — prints the split_cases table of tests/test_tokenizer.c: the word
// splits that node's RegExp gives for the GPT-2, Qwen2 and LLaMA 3 pre-tokenizer
// patterns. Run: node splits.mjs > /tmp/splits.inc, then paste into the test.
const R = {
  GPT2: /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu,
  QWEN2: /(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu,
  LLAMA3: /(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu,
};
const inputs = [
  "Hello world's 12345 IT'S",
  "a   b\t\tc  \n\n  d   ",
  "x\r\n\r\ny \n z",
  "(foo) [bar]!!\n\nbaz?",
  "中文English混合123文本",
  "café ½ ①② 3.14",
  "  leading",
  "tail  ",
  "'twas 'LL 'Re don't",
  "emoji😀😃 ok🎉!",
  "\t\tindented\n\tcode();\n",
  "1234567",
  "a\u00a0\u00a0b",
  "$100,000.50 #tag @user",
];
const esc = (s) => '"' + Array.from(Buffer.from(s, 'utf8')).map((b) => b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c ? String.fromCharCode(b) : '\\x' + b.toString(16).padStart(2, '0') + '""').join('') + '"';
for (const [name, re] of Object.entries(R)) {
  for (const s of inputs) {
    const words = s.match(re) || [];
    if (words.join('') !== s) throw new Error('not a partition');
    console.log(`    {LP_PRETOK_${name}, ${esc(s)}, ${esc(words.join('|'))}},`);
  }
}
