/* cli/cmd_synth.c — `loupe synth`: write a synthetic grounding dataset
 * (indoor scenes, boxes, masks, referring expressions, region questions). */
#include "cli.h"
#include "../datasets/scene.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void synth_help(FILE *out) {
    fprintf(out, "usage: loupe synth --seed S --n N --out DIR [--width W --height H] [--split NAME]\n\n"
                 "Generates N synthetic indoor scenes from seed S (the same seed and options\n"
                 "give byte-identical output) into DIR/images/<id>.png and DIR/annotations.json\n"
                 "(COCO/RefCOCO-style: images, categories, annotations with tight visible\n"
                 "boxes, refs with referring expressions of six kinds, regions with COCO RLE\n"
                 "masks and \"<colour> <category>\" answers).\n\n"
                 "  --width W, --height H   image size (default 256x192, 64..2048)\n"
                 "  --split NAME            split of every record (default train); 'auto'\n"
                 "                          splits by image index: %%10 in 0-7 train, 8 val, 9 test\n"
                 "  --max-objects K         objects placed per scene before culling (default 8, <= 12)\n");
}

static int parse_int(const char *s, int lo, int hi, int *v) {
    long l;
    if (!cli_parse_int(s, lo, hi, &l)) return -1;
    *v = (int)l;
    return 0;
}

int cmd_synth(int argc, char **argv) {
    lp_scene_params p;
    lp_scene_params_default(&p);
    unsigned long long seed = 0;
    int n = -1, have_seed = 0;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            synth_help(stdout);
            return CLI_EXIT_OK;
        }
        int takes = !strcmp(a, "--seed") || !strcmp(a, "--n") || !strcmp(a, "--out") || !strcmp(a, "--width") ||
                    !strcmp(a, "--height") || !strcmp(a, "--split") || !strcmp(a, "--max-objects");
        if (!takes) return cli_usage("synth", "unknown option '%s'", a);
        if (!v) return cli_usage("synth", "%s needs a value", a);
        i++;
        if (!strcmp(a, "--seed")) {
            if (!cli_parse_u64(v, &seed)) return cli_usage("synth", "--seed: '%s' is not a non-negative integer", v);
            have_seed = 1;
        } else if (!strcmp(a, "--n")) {
            if (parse_int(v, 1, 10000000, &n)) return cli_usage("synth", "--n: '%s' is not a count in 1..10000000", v);
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--width")) {
            if (parse_int(v, 64, 2048, &p.width)) return cli_usage("synth", "--width: '%s' is not in 64..2048", v);
        } else if (!strcmp(a, "--height")) {
            if (parse_int(v, 64, 2048, &p.height)) return cli_usage("synth", "--height: '%s' is not in 64..2048", v);
        } else if (!strcmp(a, "--split")) {
            if (!*v) return cli_usage("synth", "--split: empty name");
            p.split = v;
        } else {
            if (parse_int(v, p.min_objects, LP_SCENE_MAX_OBJ, &p.max_objects))
                return cli_usage("synth", "--max-objects: '%s' is not in %d..%d", v, p.min_objects, LP_SCENE_MAX_OBJ);
        }
    }
    if (!have_seed) return cli_usage("synth", "--seed is required");
    if (n < 0) return cli_usage("synth", "--n is required");
    if (!out) return cli_usage("synth", "--out is required");

    lp_synth_stats st;
    lp_error err = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    loupe_status s = lp_synth_write(out, seed, n, &p, &st, &err);
    if (s) return cli_error(s, "%s", err.msg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("synth: %d images, %d objects, %d refs (", st.images, st.annotations, st.refs);
    for (int k = 0; k < LP_N_EXPR_KINDS; k++) printf("%s%s %d", k ? ", " : "", lp_scene_kind_name(k), st.refs_by_kind[k]);
    printf("), %d sentences, %d regions -> %s/annotations.json (%.1f ms/image)\n", st.sentences, st.regions, out,
           st.images ? ms / st.images : 0.0);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_error(LOUPE_ERR_IO, "writing to stdout failed");
}
