/* tests/test_template.c — chat-template rendering and recognition.
 *
 * The Jinja strings below are real ones: Qwen2.5-Instruct's chatml, the
 * vicuna and vicuna-orca templates of llama.cpp's test-chat-template.cpp,
 * Llama-2-chat, Mistral-7B-Instruct-v0.2, Llama-3-Instruct, phi-4 and
 * Gemma-2 (the last two must be refused: loupe does not render them). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../fusion/template.h"

static const char *QWEN25 =
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

static const char *VICUNA =
    "{%- for message in messages %}{%- if message['role'] == 'system' -%}{{- '' + message['content'] + '\n\n' -}}"
    "{%- else -%}{%- if message['role'] == 'user' -%}{{-'USER: ' + message['content'] + '\n'-}}{%- else -%}"
    "{{-'ASSISTANT: ' + message['content'] + '</s>\n' -}}{%- endif -%}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}";

static const char *VICUNA_ORCA =
    "{%- for message in messages %}{%- if message['role'] == 'system' -%}{{-'SYSTEM: ' + message['content'] + '\n' -}}"
    "{%- else -%}{%- if message['role'] == 'user' -%}{{-'USER: ' + message['content'] + '\n'-}}{%- else -%}"
    "{{-'ASSISTANT: ' + message['content'] + '</s>\n' -}}{%- endif -%}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}";

static const char *LLAMA2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

static const char *MISTRAL =
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

static const char *LLAMA3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}";

static const char *PHI4 =
    "{% for message in messages %}{% if (message['role'] == 'system') %}"
    "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}"
    "{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|><|im_start|>assistant<|im_sep|>'}}"
    "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}";

static const char *GEMMA2 =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

static const lp_template *named(const char *name) {
    const lp_template *t = NULL;
    lp_error err = {0};
    assert_int_equal(lp_template_by_name(name, &t, &err), LOUPE_OK);
    assert_non_null(t);
    return t;
}

/* Render and check the text and that the marker sits at image_at. */
static void check_render(const char *name, const char *system, const char *q, const char *want) {
    char *text = NULL;
    size_t at = 0;
    lp_error err = {0};
    assert_int_equal(lp_template_render(named(name), system, q, &text, &at, &err), LOUPE_OK);
    assert_string_equal(text, want);
    assert_memory_equal(text + at, LP_IMAGE_MARKER, strlen(LP_IMAGE_MARKER));
    free(text);
}

static void test_render_vicuna(void **state) {
    (void)state;
    check_render("vicuna", NULL, "What is this?",
                 "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat is this? "
                 "ASSISTANT:");
    check_render("vicuna", "", "q", "USER: <image>\nq ASSISTANT:");
    check_render("vicuna", "Be brief.", "q", "Be brief. USER: <image>\nq ASSISTANT:");
    check_render("llava", "", "q", "USER: <image>\nq ASSISTANT:"); /* alias */
}

static void test_render_chatml(void **state) {
    (void)state;
    check_render("chatml", NULL, "Where is the cat?",
                 "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhere is "
                 "the cat?<|im_end|>\n<|im_start|>assistant\n");
    check_render("chatml", "", "q", "<|im_start|>user\n<image>\nq<|im_end|>\n<|im_start|>assistant\n");
    check_render("chatml", "S", "q",
                 "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<image>\nq<|im_end|>\n<|im_start|>assistant\n");
}

static void test_render_others(void **state) {
    (void)state;
    check_render("llama2", "S", "q", "[INST] <<SYS>>\nS\n<</SYS>>\n\n<image>\nq [/INST]");
    check_render("llama2", "", "q", "[INST] <image>\nq [/INST]");
    check_render("mistral", NULL, "q", "[INST] <image>\nq [/INST]");
    check_render("mistral", "S", "q", "[INST] S\n\n<image>\nq [/INST]");
    check_render("llama3", "S", "q",
                 "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>"
                 "\n\n<image>\nq<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    check_render("llama3", "", "q",
                 "<|start_header_id|>user<|end_header_id|>\n\n<image>\nq<|eot_id|><|start_header_id|>assistant"
                 "<|end_header_id|>\n\n");
}

/* A marker typed by the user is text: the image position is the template's. */
static void test_marker_in_text(void **state) {
    (void)state;
    char *text = NULL;
    size_t at = 0;
    assert_int_equal(lp_template_render(named("vicuna"), "<image> sys", "see <image>", &text, &at, NULL), LOUPE_OK);
    assert_string_equal(text, "<image> sys USER: <image>\nsee <image> ASSISTANT:");
    assert_int_equal(at, strlen("<image> sys USER: "));
    free(text);
}

static void test_stops(void **state) {
    (void)state;
    const lp_template *t = named("chatml");
    assert_true(t->n_stops >= 1);
    assert_string_equal(t->stops[0], "<|im_end|>");
    t = named("vicuna");
    assert_string_equal(t->stops[0], "</s>");
    t = named("llama3");
    assert_string_equal(t->stops[0], "<|eot_id|>");
    for (int id = 0; id < LP_TEMPLATE_COUNT; id++) {
        static const char *names[] = {"vicuna", "chatml", "llama2", "mistral", "llama3"};
        t = named(names[id]);
        assert_int_equal(t->id, id);
        assert_true(t->n_stops > 0 && t->n_stops <= LP_TEMPLATE_MAX_STOPS);
        for (int k = 0; k < t->n_stops; k++) assert_true(strlen(t->stops[k]) > 0);
    }
}

static void expect_detect(const char *tmpl, const char *name) {
    const lp_template *t = NULL;
    lp_error err = {0};
    assert_int_equal(lp_template_detect(tmpl, &t, &err), LOUPE_OK);
    assert_string_equal(t->name, name);
}

static void test_detect(void **state) {
    (void)state;
    expect_detect(QWEN25, "chatml");
    expect_detect(VICUNA, "vicuna");
    expect_detect(VICUNA_ORCA, "vicuna");
    expect_detect(LLAMA2, "llama2");
    expect_detect(MISTRAL, "mistral");
    expect_detect(LLAMA3, "llama3");
    expect_detect("chatml", "chatml"); /* a bare name as the metadata value */
    expect_detect("vicuna", "vicuna");
}

static void test_detect_unknown(void **state) {
    (void)state;
    const char *bad[] = {PHI4, GEMMA2, "", "{{ messages }}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const lp_template *t = (const lp_template *)1;
        lp_error err = {0};
        assert_int_equal(lp_template_detect(bad[i], &t, &err), LOUPE_ERR_UNSUPPORTED);
        assert_null(t);
        assert_int_equal(err.status, LOUPE_ERR_UNSUPPORTED);
    }
    lp_error err = {0};
    const lp_template *t = NULL;
    assert_int_equal(lp_template_detect(GEMMA2, &t, &err), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "not recognised"));
    assert_non_null(strstr(err.msg, "{{ bos_token }}")); /* shows how the template starts */
    assert_non_null(strstr(err.msg, "vicuna"));          /* and what is known */
    assert_int_equal(lp_template_detect(NULL, &t, &err), LOUPE_ERR_UNSUPPORTED);
}

static void test_by_name_unknown(void **state) {
    (void)state;
    const lp_template *t = (const lp_template *)1;
    lp_error err = {0};
    assert_int_equal(lp_template_by_name("zephyr", &t, &err), LOUPE_ERR_INVALID_ARG);
    assert_null(t);
    assert_non_null(strstr(err.msg, "zephyr"));
    assert_non_null(strstr(err.msg, "chatml"));
    assert_int_equal(lp_template_by_name(NULL, &t, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_template_by_name("ChatML", &t, &err), LOUPE_ERR_INVALID_ARG); /* case-sensitive */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_vicuna),  cmocka_unit_test(test_render_chatml),
        cmocka_unit_test(test_render_others),  cmocka_unit_test(test_marker_in_text),
        cmocka_unit_test(test_stops),          cmocka_unit_test(test_detect),
        cmocka_unit_test(test_detect_unknown), cmocka_unit_test(test_by_name_unknown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
