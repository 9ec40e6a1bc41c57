/* language/flash_convert.c — a llama/qwen2 decoder GGUF to the flash layout
 * (flash_format.h): FFN neurons bundled row-column (LLM in a flash,
 * Alizadeh et al. 2023) and a sparsity predictor per layer: an SVD of
 * ffn_gate computed here, or factors trained offline and read from a
 * predictor file (tools/flash/train_predictor.py).
 *
 * One pass over the input's tensor table. Every tensor other than the dense
 * FFN matrices is added to the writer with its data borrowed from the input
 * mapping; where a layer's ffn_gate.weight was, that layer is converted
 * (bundles, then the predictor) and blk.L.ffn_bundle, ffn_pred_a, ffn_pred_b
 * are added. The writer borrows data until it writes, so every layer's
 * bundle buffer stays allocated to the end (for a 7B Q4_0 model ~2.4 GB);
 * only the dequantized matrices are per layer.
 *
 * The predictor is a randomized truncated SVD of ffn_gate (Halko, Martinsson
 * and Tropp 2011, algorithms 4.4 and 5.1): a Gaussian sketch, two power
 * iterations with re-orthonormalization, then the exact SVD of the small
 * projected matrix through the eigen-decomposition of its Gram matrix
 * (cyclic Jacobi, in double). The big products go through OpenBLAS sgemm.
 *
 * A predictor file is opened and every layer's factors are checked (present,
 * F32/F16, shapes against n_embd/n_ff) in the plan, before any work; each
 * layer's factors are converted to f16 where that layer is converted. */
#include "flash_format.h"
#include "../core/fileio.h"

#include <cblas.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LAYER 4096
#define MAX_DIM (1 << 20)
#define OVERSAMPLE 8   /* p in Halko et al.: extra sketch columns beyond the rank */
#define POWER_ITERS 2  /* subspace iterations; enough for the slowly decaying spectra of FFN weights */
#define RANK_STEP 16   /* auto ranks are multiples of this (and at least this) */

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* ---- deterministic Gaussian numbers (splitmix64 + Box-Muller) ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n standard normal floats from the stream of (seed, layer). */
static void gaussian_fill(float *x, size_t n, uint64_t seed, int layer) {
    uint64_t s = seed ^ ((uint64_t)(layer + 1) * 0xD1B54A32D192ED03ull);
    for (size_t i = 0; i < n; i += 2) {
        /* u1 in (0, 1] so the log is finite; u2 in [0, 1) */
        double u1 = (double)((splitmix64(&s) >> 11) + 1) * 0x1.0p-53;
        double u2 = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
        double r = sqrt(-2.0 * log(u1)), a = 2.0 * M_PI * u2;
        x[i] = (float)(r * cos(a));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(a));
    }
}

/* ---- small dense linear algebra ---- */

/* Orthonormalize the k rows (length n) of q in place: Gram-Schmidt applied
 * twice ("twice is enough", Giraud et al. 2005), so the result is
 * orthonormal to working precision even when rows are nearly dependent.
 * Blocked (BCGS2, Barlow & Smoktunowicz 2013): a block of ORTH_BLOCK rows
 * is first cleared of all earlier rows with two sgemm calls, then
 * modified Gram-Schmidt runs inside the block. Row by row, MGS streams all
 * earlier rows through memory for every row (k^2/2 vectors of n floats: at
 * k = 454, n = 11008 that was 2.8 s per call, ten times the sgemm work);
 * blocked, it streams them once per block. In exact arithmetic both give
 * the same rows, since the rows of a finished block are orthonormal. A row
 * with nothing left after projection (the sketch has more rows than the
 * matrix has rank) becomes zero and contributes nothing downstream.
 * h: ORTH_BLOCK * k floats of scratch; n0: k floats. */
/* Level-1 kernels for the rows of one block. Not OpenBLAS's: its sdot and
 * saxpy start threads for long vectors, and thousands of short calls then
 * spend most of their time handing work over. Sixteen partial sums let the
 * compiler vectorize the dot product without reassociating a reduction. */
static float dot(const float *restrict a, const float *restrict b, size_t n) {
    float acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

/* y += alpha x (x may be y). */
static void axpy(float *y, float alpha, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

#define ORTH_BLOCK 32
static void orth_rows(float *q, int k, int64_t n, float *h, float *n0) {
    const size_t N = (size_t)n;
    for (int pass = 0; pass < 2; pass++) {
        for (int j = 0; j < k; j++) n0[j] = sqrtf(dot(q + (size_t)j * N, q + (size_t)j * N, N));
        for (int j0 = 0; j0 < k; j0 += ORTH_BLOCK) {
            const int b = k - j0 < ORTH_BLOCK ? k - j0 : ORTH_BLOCK;
            float *blk = q + (size_t)j0 * N;
            if (j0 > 0) { /* blk -= (blk Qprev^T) Qprev, Qprev = rows 0..j0-1 */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, j0, (int)n, 1.0f, blk, (int)n, q, (int)n, 0.0f, h, j0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, (int)n, j0, -1.0f, h, j0, q, (int)n, 1.0f, blk, (int)n);
            }
            for (int j = j0; j < j0 + b; j++) { /* MGS inside the block (it stays in cache) */
                float *qj = q + (size_t)j * N;
                for (int i = j0; i < j; i++) axpy(qj, -dot(q + (size_t)i * N, qj, N), q + (size_t)i * N, N);
                float n1 = sqrtf(dot(qj, qj, N));
                if (!(n1 > 1e-6f * n0[j]) || !isfinite(n1)) memset(qj, 0, N * sizeof *qj);
                else axpy(qj, 1.0f / n1 - 1.0f, qj, N);
            }
        }
    }
}

/* Eigen-decomposition of the symmetric k x k matrix a (row-major, destroyed):
 * a = V diag(w) V^T with the eigenvalues w in descending order and the
 * eigenvectors in the ROWS of vt (vt = V^T). Cyclic Jacobi rotations (Golub
 * & Van Loan 8.5), in double; k is the sketch size (a few hundred at most).
 * A rotation in the (p, q) plane changes rows and columns p and q; by
 * symmetry only rows p and q are computed (contiguous) and mirrored into
 * the columns, and the eigenvectors are rows too, so a rotation streams
 * through memory instead of striding down columns. */
static void jacobi_eig(double *a, int k, double *vt, double *w) {
    const size_t K = (size_t)k;
    for (size_t i = 0; i < K * K; i++) vt[i] = 0.0;
    for (size_t i = 0; i < K; i++) vt[i * K + i] = 1.0;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0, diag = 0.0;
        for (size_t p = 0; p < K; p++) {
            diag += a[p * K + p] * a[p * K + p];
            for (size_t q = p + 1; q < K; q++) off += a[p * K + q] * a[p * K + q];
        }
        /* off-diagonal below 1e-12 of the diagonal (Frobenius): eigenvalues
         * to ~1e-12 relative, far below the f16 the factors are stored in */
        if (off <= 1e-24 * diag) break;
        for (size_t p = 0; p + 1 < K; p++) {
            for (size_t q = p + 1; q < K; q++) {
                double *rp = a + p * K, *rq = a + q * K;
                const double apq = rp[q], app = rp[p], aqq = rq[q];
                if (apq == 0.0) continue;
                if (fabs(apq) < 1e-18 * sqrt(fabs(app * aqq))) { /* negligible: drop it */
                    rp[q] = rq[p] = 0.0;
                    continue;
                }
                /* t = tan of the angle that zeroes a[p][q] */
                double theta = (aqq - app) / (2.0 * apq);
                double t = fabs(theta) > 1e150 ? 0.5 / theta
                                                : (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (size_t r = 0; r < K; r++) { /* rows p, q of J^T a (= columns of a J) */
                    double x = rp[r], y = rq[r];
                    rp[r] = c * x - s * y;
                    rq[r] = s * x + c * y;
                }
                rp[p] = app - t * apq;
                rq[q] = aqq + t * apq;
                rp[q] = rq[p] = 0.0;
                for (size_t r = 0; r < K; r++) {
                    if (r == p || r == q) continue;
                    a[r * K + p] = rp[r];
                    a[r * K + q] = rq[r];
                }
                double *vp = vt + p * K, *vq = vt + q * K; /* (V J)^T */
                for (size_t r = 0; r < K; r++) {
                    double x = vp[r], y = vq[r];
                    vp[r] = c * x - s * y;
                    vq[r] = s * x + c * y;
                }
            }
        }
    }
    for (size_t i = 0; i < K; i++) w[i] = a[i * K + i];
    /* selection sort, descending, moving the eigenvector rows along (k is small) */
    for (size_t i = 0; i < K; i++) {
        size_t best = i;
        for (size_t j = i + 1; j < K; j++)
            if (w[j] > w[best]) best = j;
        if (best == i) continue;
        double tw = w[i];
        w[i] = w[best];
        w[best] = tw;
        for (size_t r = 0; r < K; r++) {
            double tv = vt[i * K + r];
            vt[i * K + r] = vt[best * K + r];
            vt[best * K + r] = tv;
        }
    }
}

/* ---- the SVD predictor of one layer ---- */

typedef struct svd_job {
    const float *w;  /* ffn_gate dequantized: (m, n) row-major, m = n_ff rows of n = n_embd */
    int m, n;
    int fixed_rank;  /* > 0: this rank */
    int max_rank;    /* auto: the largest rank allowed (byte cap, dimensions) */
    float energy;    /* auto: target captured energy */
    uint64_t seed;
    int layer;
} svd_job;

/* A (rank, n) = S_r V_r^T and B (m, rank) = Q U_r as f16, so that W ~ B A.
 * *a16 and *b16 are malloc'd. Returns LOUPE_OK, LOUPE_ERR_NOMEM,
 * LOUPE_ERR_FORMAT (W holds NaN or infinity) or LOUPE_ERR_LIMIT (a factor
 * does not fit in f16). */
static loupe_status svd_layer(const svd_job *j, int *rank_out, float *energy_out, uint16_t **a16, uint16_t **b16) {
    const int m = j->m, n = j->n, mn = m < n ? m : n;
    const int want = j->fixed_rank > 0 ? j->fixed_rank : j->max_rank;
    const int k = want + OVERSAMPLE < mn ? want + OVERSAMPLE : mn;
    const size_t M = (size_t)m, N = (size_t)n, K = (size_t)k;
    loupe_status st = LOUPE_ERR_NOMEM;
    float *yt = malloc(K * M * sizeof *yt); /* Y^T, then Q^T: (k, m), one basis vector per row */
    float *zt = malloc(K * N * sizeof *zt); /* Omega^T, Z^T, then Bm = Q^T W: (k, n) */
    double *bd = malloc(K * N * sizeof *bd);
    double *c = malloc(K * K * sizeof *c), *ut = malloc(K * K * sizeof *ut), *lam = malloc(K * sizeof *lam);
    float *uf = malloc(K * K * sizeof *uf);
    float *h = malloc(ORTH_BLOCK * K * sizeof *h), *n0 = malloc(K * sizeof *n0); /* orth_rows scratch */
    float *a = NULL, *b = NULL;
    *a16 = NULL;
    *b16 = NULL;
    if (!yt || !zt || !bd || !c || !ut || !lam || !uf || !h || !n0) goto out;

    double norm2 = 0.0; /* ||W||_F^2 */
    for (size_t i = 0; i < M * N; i++) norm2 += (double)j->w[i] * (double)j->w[i];
    if (!isfinite(norm2)) {
        st = LOUPE_ERR_FORMAT;
        goto out;
    }

    /* range finder with power iterations: Q = orth(W (W^T W)^q Omega) */
    gaussian_fill(zt, K * N, j->seed, j->layer);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, m, n, 1.0f, zt, n, j->w, n, 0.0f, yt, m); /* Y^T = Omega^T W^T */
    orth_rows(yt, k, m, h, n0);
    for (int it = 0; it < POWER_ITERS; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, m, 1.0f, yt, m, j->w, n, 0.0f, zt, n); /* Z^T = Q^T W */
        orth_rows(zt, k, n, h, n0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, m, n, 1.0f, zt, n, j->w, n, 0.0f, yt, m); /* Y^T = Z^T W^T */
        orth_rows(yt, k, m, h, n0);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, n, m, 1.0f, yt, m, j->w, n, 0.0f, zt, n); /* Bm = Q^T W */

    /* Bm = U S V^T from Bm Bm^T = U S^2 U^T (k x k, in double) */
    for (size_t i = 0; i < K * N; i++) bd[i] = zt[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, k, n, 1.0, bd, n, bd, n, 0.0, c, k);
    jacobi_eig(c, k, ut, lam);
    for (size_t i = 0; i < K; i++)
        if (lam[i] < 0.0) lam[i] = 0.0; /* rounding below a zero singular value */

    int rank = j->fixed_rank;
    if (rank <= 0) {
        /* smallest multiple of RANK_STEP reaching the target, else the cap */
        rank = j->max_rank;
        double cum = 0.0;
        for (int r = 0; r < j->max_rank; r++) {
            cum += lam[r];
            if ((r + 1) % RANK_STEP == 0 && cum >= (double)j->energy * norm2) {
                rank = r + 1;
                break;
            }
        }
    }
    double kept = 0.0; /* ||B A||_F^2 = sum of the kept s_i^2: Q U_r has orthonormal columns */
    for (int r = 0; r < rank; r++) kept += lam[r];
    double e = norm2 > 0.0 ? kept / norm2 : 1.0;
    *energy_out = (float)(e > 1.0 ? 1.0 : e);
    *rank_out = rank;

    const size_t R = (size_t)rank;
    a = malloc(R * N * sizeof *a);
    b = malloc(M * R * sizeof *b);
    *a16 = malloc(R * N * sizeof **a16);
    *b16 = malloc(M * R * sizeof **b16);
    if (!a || !b || !*a16 || !*b16) goto out;
    for (size_t i = 0; i < K * K; i++) uf[i] = (float)ut[i]; /* U^T: (k, k), the first rank rows are U_r^T */
    /* A = U_r^T Bm = S_r V_r^T: (rank, n); B = Q U_r = (Q^T)^T (U_r^T)^T: (m, rank) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rank, n, k, 1.0f, uf, k, zt, n, 0.0f, a, n);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, m, rank, k, 1.0f, yt, m, uf, k, 0.0f, b, rank);
    /* |A| <= s_1 and |B| <= 1 in exact arithmetic; s_1 of a real gate is
     * tens, but a file must not silently hold infinities */
    float amax = 0.0f;
    for (size_t i = 0; i < R * N; i++) amax = fmaxf(amax, fabsf(a[i]));
    for (size_t i = 0; i < M * R; i++) amax = fmaxf(amax, fabsf(b[i]));
    if (!(amax <= 65504.0f)) {
        st = LOUPE_ERR_LIMIT;
        goto out;
    }
    lp_quantize_row(LP_TYPE_F16, a, *a16, (int64_t)(R * N));
    lp_quantize_row(LP_TYPE_F16, b, *b16, (int64_t)(M * R));
    st = LOUPE_OK;
out:
    if (st != LOUPE_OK) {
        free(*a16);
        free(*b16);
        *a16 = NULL;
        *b16 = NULL;
    }
    free(yt);
    free(zt);
    free(bd);
    free(c);
    free(ut);
    free(lam);
    free(uf);
    free(h);
    free(n0);
    free(a);
    free(b);
    return st;
}

/* ---- conversion ---- */

typedef struct layer_in {
    const lp_gguf_tensor *gate, *up, *down; /* in the input */
    const lp_gguf_tensor *pred_a, *pred_b;  /* in the predictor file (LP_FLASH_PRED_FILE) */
} layer_in;

typedef struct layer_out {
    uint8_t *bundle;             /* (n_ff, stride) */
    uint16_t *pred_a, *pred_b;   /* f16 (rank, n_embd), (n_ff, rank) */
    int rank;
    float energy;
    uint64_t offset;             /* of blk.L.ffn_bundle in the data section */
    bool done;
} layer_out;

typedef struct conv {
    lp_gguf *g;
    const char *in, *out;
    const lp_flash_convert_params *p;
    lp_gguf *pg;           /* the predictor file (LP_FLASH_PRED_FILE), else NULL */
    const char *pred_kind; /* loupe.flash.predictor of the output: "svd", "lowrank", "none" */
    int n_layer, n_embd, n_ff;  /* n_ff: the widest layer's */
    int *ff;                    /* (n_layer) each layer's FFN width (openelm varies it) */
    lp_type gate_type, up_type, down_type;
    size_t gate_bytes, up_bytes, down_bytes, bundle_bytes, stride;
    layer_in *li;
    layer_out *lo;
} conv;

/* "blk.<L>.ffn_<part>.weight": the layer and which of gate/up/down (0/1/2), or -1. */
static int ffn_part(const char *name, int *layer) {
    int n = 0;
    unsigned l;
    char part[8];
    if (sscanf(name, "blk.%u.ffn_%7[a-z].weight%n", &l, part, &n) != 2 || n == 0 || name[n] != '\0') return -1;
    if (l > INT32_MAX) return -1;
    *layer = (int)l;
    if (!strcmp(part, "gate")) return 0;
    if (!strcmp(part, "up")) return 1;
    if (!strcmp(part, "down")) return 2;
    return -1;
}

static loupe_status read_dim(const conv *cv, const char *arch, const char *suffix, int64_t max, int *out, lp_error *err) {
    char key[96];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v = 0;
    loupe_status st = lp_gguf_get_u32(cv->g, key, &v, err);
    if (st != LOUPE_OK) return st;
    if (v == 0 || (int64_t)v > max)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %" PRIu32 " is out of range [1, %" PRId64 "]", cv->in, key, v, max);
    *out = (int)v;
    return LOUPE_OK;
}

static loupe_status check_ffn_tensor(const conv *cv, const lp_gguf_tensor *t, int64_t ne0, int64_t ne1, lp_error *err) {
    if (t->n_dims != 2 || t->ne[0] != ne0 || t->ne[1] != ne1)
        return lp_fail(err, LOUPE_ERR_FORMAT,
                       "%s: tensor %s has shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] (%" PRIu32
                       " dims), expected [%" PRId64 ", %" PRId64 "]",
                       cv->in, t->name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], t->n_dims, ne0, ne1);
    if (!lp_type_can_dequantize(t->type))
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s has type %s, which loupe cannot dequantize", cv->in, t->name,
                       lp_type_name(t->type));
    if (!t->data && t->nbytes)
        return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s is not mapped", cv->in, t->name);
    return LOUPE_OK;
}

/* The predictor file: its kind (loupe.flash.predictor, "lowrank" when
 * absent) and every layer's blk.L.ffn_pred_a (ne [n_embd, rank]) and
 * blk.L.ffn_pred_b (ne [rank, n_ff]), F32 or F16, with the rank in
 * [1, min(n_embd, n_ff)] as lp_flash_layout_read wants it. A factor of a
 * layer the decoder does not have means the file was made for another
 * model: refused too. Every error names the predictor file. */
static loupe_status plan_predictor_file(conv *cv, lp_error *err) {
    const char *pp = cv->p->predictor_path;
    if (!(cv->pg = lp_gguf_open(pp, err))) return err ? err->status : LOUPE_ERR_IO;
    const lp_gguf *pg = cv->pg;
    cv->pred_kind = "lowrank";
    const lp_gguf_value *kind = lp_gguf_get(pg, "loupe.flash.predictor");
    if (kind) {
        if (kind->type != LP_GGUF_STRING)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key loupe.flash.predictor is %s, expected str", pp,
                           lp_gguf_vtype_name(kind->type));
        if (!strcmp(kind->v.str.s, "svd")) cv->pred_kind = "svd";
        else if (strcmp(kind->v.str.s, "lowrank") != 0)
            return lp_fail(err, LOUPE_ERR_FORMAT,
                           "%s: key loupe.flash.predictor = \"%s\" is not a predictor a file can hold (lowrank, svd)", pp,
                           kind->v.str.s);
    }
    for (uint64_t i = 0; i < pg->n_tensors; i++) {
        const char *name = pg->tensors[i].name;
        unsigned l = 0;
        char ab = 0;
        int n = 0;
        if (sscanf(name, "blk.%u.ffn_pred_%c%n", &l, &ab, &n) == 2 && n > 0 && name[n] == '\0' &&
            (ab == 'a' || ab == 'b') && l >= (unsigned)cv->n_layer)
            return lp_fail(err, LOUPE_ERR_FORMAT,
                           "%s: tensor %s belongs to layer %u, but %s has %d layers (a predictor for another model?)", pp,
                           name, l, cv->in, cv->n_layer);
    }
    char name[64];
    for (int l = 0; l < cv->n_layer; l++) {
        const int mn = cv->n_embd < cv->ff[l] ? cv->n_embd : cv->ff[l];
        for (int ab = 0; ab < 2; ab++) {
            snprintf(name, sizeof name, "blk.%d.ffn_pred_%c", l, ab ? 'b' : 'a');
            int64_t i = lp_gguf_find_tensor(pg, name);
            if (i < 0)
                return lp_fail(err, LOUPE_ERR_FORMAT,
                               "%s: tensor %s is missing (the predictor needs one per layer of %s, %d layers)", pp, name,
                               cv->in, cv->n_layer);
            const lp_gguf_tensor *t = &pg->tensors[i];
            if (t->type != LP_TYPE_F32 && t->type != LP_TYPE_F16)
                return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s has type %s, expected f32 or f16", pp, name,
                               lp_type_name(t->type));
            /* A (rank, n_embd): ne [n_embd, rank], rank from A; B (n_ff, rank): ne [rank, n_ff] */
            const int64_t rank = ab ? cv->li[l].pred_a->ne[1] : t->ne[1];
            const bool ok = t->n_dims == 2 && (ab ? t->ne[0] == rank && t->ne[1] == cv->ff[l]
                                                  : t->ne[0] == cv->n_embd && t->ne[1] >= 1 && t->ne[1] <= mn);
            if (!ok) {
                if (ab)
                    return lp_fail(err, LOUPE_ERR_FORMAT,
                                   "%s: tensor %s has shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] (%" PRIu32
                                   " dims), expected [%" PRId64 ", %d] (rank of blk.%d.ffn_pred_a, n_ff)",
                                   pp, name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], t->n_dims, rank, cv->ff[l], l);
                return lp_fail(err, LOUPE_ERR_FORMAT,
                               "%s: tensor %s has shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] (%" PRIu32
                               " dims), expected [%d, rank] (n_embd, 1 <= rank <= %d)",
                               pp, name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], t->n_dims, cv->n_embd, mn);
            }
            if (!t->data) return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s is not mapped", pp, name);
            *(ab ? &cv->li[l].pred_b : &cv->li[l].pred_a) = t;
        }
    }
    return LOUPE_OK;
}

/* The decoder's dimensions, every layer's three FFN tensors (present, shaped
 * and typed), the bundle layout, and the predictor file's tensors. Nothing
 * heavy: fails before any work. */
static loupe_status plan(conv *cv, lp_error *err) {
    const lp_gguf *g = cv->g;
    loupe_status st;
    if (lp_flash_is_flash(g))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: already a flash file (key loupe.flash.version is present)", cv->in);
    const char *arch = NULL;
    if ((st = lp_gguf_get_str(g, "general.architecture", &arch, err)) != LOUPE_OK) return st;
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0 && strcmp(arch, "openelm") != 0)
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: key general.architecture = \"%s\" is not supported by the flash layout (llama, qwen2, openelm)",
                       cv->in, arch);
    if ((st = read_dim(cv, arch, "block_count", MAX_LAYER, &cv->n_layer, err)) != LOUPE_OK) return st;
    if (cv->n_layer > LP_FLASH_MAX_LAYER)
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: %d layers (the flash layout holds at most %d)", cv->in, cv->n_layer,
                       LP_FLASH_MAX_LAYER);
    if ((st = read_dim(cv, arch, "embedding_length", MAX_DIM, &cv->n_embd, err)) != LOUPE_OK) return st;
    if (!(cv->ff = calloc((size_t)cv->n_layer, sizeof *cv->ff))) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", cv->in);
    if ((st = lp_flash_ffn_widths(cv->g, arch, cv->n_layer, cv->ff, &cv->n_ff, err)) != LOUPE_OK) return st;

    cv->li = calloc((size_t)cv->n_layer, sizeof *cv->li);
    cv->lo = calloc((size_t)cv->n_layer, sizeof *cv->lo);
    if (!cv->li || !cv->lo) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", cv->in);

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        int l = 0, part = ffn_part(t->name, &l);
        if (part < 0) continue;
        if (l >= cv->n_layer)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s belongs to layer %d, but %s.block_count = %d", cv->in, t->name, l,
                           arch, cv->n_layer);
        const lp_gguf_tensor **slot = part == 0 ? &cv->li[l].gate : part == 1 ? &cv->li[l].up : &cv->li[l].down;
        *slot = t; /* names are unique (the reader checks) */
    }
    static const char *const parts[3] = {"gate", "up", "down"};
    for (int l = 0; l < cv->n_layer; l++) {
        const lp_gguf_tensor *ts[3] = {cv->li[l].gate, cv->li[l].up, cv->li[l].down};
        for (int p = 0; p < 3; p++)
            if (!ts[p])
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor blk.%d.ffn_%s.weight is missing", cv->in, l, parts[p]);
        /* ggml order: gate and up are n_ff rows of n_embd, down n_embd rows of n_ff */
        if ((st = check_ffn_tensor(cv, ts[0], cv->n_embd, cv->ff[l], err)) != LOUPE_OK) return st;
        if ((st = check_ffn_tensor(cv, ts[1], cv->n_embd, cv->ff[l], err)) != LOUPE_OK) return st;
        if ((st = check_ffn_tensor(cv, ts[2], cv->ff[l], cv->n_embd, err)) != LOUPE_OK) return st;
        /* one gate type and one up type for the file: their bytes are copied */
        if (ts[0]->type != cv->li[0].gate->type || ts[1]->type != cv->li[0].up->type) {
            const lp_gguf_tensor *t = ts[0]->type != cv->li[0].gate->type ? ts[0] : ts[1];
            const lp_gguf_tensor *t0 = t == ts[0] ? cv->li[0].gate : cv->li[0].up;
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                           "%s: tensor %s has type %s, but %s has %s: the flash layout needs one type per part for all layers",
                           cv->in, t->name, lp_type_name(t->type), t0->name, lp_type_name(t0->type));
        }
    }
    cv->gate_type = cv->li[0].gate->type;
    cv->up_type = cv->li[0].up->type;

    /* down columns: the input's type when loupe can write it (exact for
     * F32/F16/BF16); for a mix of types, F32 if all are plain floats (still
     * exact), else Q8_0 (requantized, the closest loupe can write) */
    lp_type dt = cv->li[0].down->type;
    bool same = true, floats = true;
    for (int l = 0; l < cv->n_layer; l++) {
        lp_type t = cv->li[l].down->type;
        same &= t == dt;
        floats &= t == LP_TYPE_F32 || t == LP_TYPE_F16 || t == LP_TYPE_BF16;
    }
    if (!same) dt = floats ? LP_TYPE_F32 : LP_TYPE_Q8_0;
    if (!lp_type_can_quantize(dt) || lp_row_size(dt, cv->n_embd) == 0) dt = LP_TYPE_Q8_0;
    if (lp_row_size(dt, cv->n_embd) == 0) dt = LP_TYPE_F16; /* n_embd not a multiple of 32 */
    cv->down_type = dt;

    cv->gate_bytes = lp_row_size(cv->gate_type, cv->n_embd);
    cv->up_bytes = lp_row_size(cv->up_type, cv->n_embd);
    cv->down_bytes = lp_row_size(cv->down_type, cv->n_embd);
    cv->bundle_bytes = cv->gate_bytes + cv->up_bytes + cv->down_bytes;
    cv->stride = round_up(cv->bundle_bytes, LP_FLASH_BUNDLE_ALIGN);
    if (cv->stride > UINT32_MAX) /* cannot happen within MAX_DIM; the keys are u32 */
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: a bundle of %zu bytes is too large", cv->in, cv->stride);

    const lp_flash_convert_params *p = cv->p;
    int mn = cv->n_embd;
    for (int l = 0; l < cv->n_layer; l++)
        if (cv->ff[l] < mn) mn = cv->ff[l];
    if (p->predictor == LP_FLASH_PRED_SVD && p->rank > mn)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: predictor rank %d exceeds min(n_embd, n_ff) = %d", cv->in, p->rank, mn);
    cv->pred_kind = p->predictor == LP_FLASH_PRED_SVD ? "svd" : "none";
    if (p->predictor == LP_FLASH_PRED_FILE) return plan_predictor_file(cv, err);
    return LOUPE_OK;
}

/* Write down[:, i] for every neuron i into its bundle. down is (n_embd, n_ff)
 * row-major in its own type; `d` is its dequantization (or NULL when the
 * column's elements are copied as they are). Columns are gathered in tiles
 * so both the reads and the writes stay in cache. */
#define TILE 64
static void write_down_columns(const conv *cv, int l, const lp_gguf_tensor *down, const float *d, uint8_t *bundle,
                               float *tile) {
    const size_t n_embd = (size_t)cv->n_embd, n_ff = (size_t)cv->ff[l];
    const size_t col_off = cv->gate_bytes + cv->up_bytes;
    if (!d) { /* same plain type in and out (f32, f16, bf16): element bytes */
        const size_t es = lp_type_block_bytes(cv->down_type);
        const size_t row = lp_row_size(down->type, (int64_t)n_ff);
        const uint8_t *src = down->data;
        for (size_t i0 = 0; i0 < n_ff; i0 += TILE) {
            size_t i1 = i0 + TILE < n_ff ? i0 + TILE : n_ff;
            for (size_t e = 0; e < n_embd; e++) {
                uint8_t *dst = bundle + col_off + e * es;
                const uint8_t *s = src + e * row;
                /* constant sizes: a move, not a call, per element */
                if (es == 2)
                    for (size_t i = i0; i < i1; i++) memcpy(dst + i * cv->stride, s + i * 2, 2);
                else if (es == 4)
                    for (size_t i = i0; i < i1; i++) memcpy(dst + i * cv->stride, s + i * 4, 4);
                else
                    for (size_t i = i0; i < i1; i++) memcpy(dst + i * cv->stride, s + i * es, es);
            }
        }
        return;
    }
    for (size_t i0 = 0; i0 < n_ff; i0 += TILE) {
        size_t i1 = i0 + TILE < n_ff ? i0 + TILE : n_ff;
        for (size_t e = 0; e < n_embd; e++)
            for (size_t i = i0; i < i1; i++) tile[(i - i0) * n_embd + e] = d[e * n_ff + i];
        for (size_t i = i0; i < i1; i++)
            lp_quantize_row(cv->down_type, tile + (i - i0) * n_embd, bundle + i * cv->stride + col_off, (int64_t)n_embd);
    }
}

/* One factor from the predictor file (F32 or F16, checked by the plan) as
 * f16, in *out (malloc'd). Values that are not finite or beyond the f16
 * range are refused: a NaN or infinite score would rank neurons at random. */
static loupe_status read_factor(const conv *cv, const lp_gguf_tensor *t, uint16_t **out, lp_error *err) {
    const char *pp = cv->p->predictor_path;
    const size_t n = (size_t)lp_gguf_tensor_nelements(t);
    float *f = malloc(n * sizeof *f);
    *out = malloc(n * sizeof **out);
    loupe_status st = LOUPE_OK;
    if (!f || !*out) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for tensor %s", pp, t->name);
        goto out;
    }
    if (!lp_dequantize_row(t->type, t->data, f, (int64_t)n)) {
        st = lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s: conversion to f32 failed", pp, t->name);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(f[i]) <= 65504.0f)) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: element %zu = %g is not finite or beyond the f16 range", pp,
                         t->name, i, (double)f[i]);
            goto out;
        }
    lp_quantize_row(LP_TYPE_F16, f, *out, (int64_t)n); /* f16 in: the same bits back */
out:
    if (st != LOUPE_OK) {
        free(*out);
        *out = NULL;
    }
    free(f);
    return st;
}

/* An "svd" predictor from a file states its energy too (lp_flash_layout_read
 * requires it): 1 - ||W - B A||_F^2 / ||W||_F^2 with the f16 factors as
 * stored, clamped to [0, 1]. For a truncated SVD this is ||B A||^2 / ||W||^2,
 * what svd_layer reports; for other factors it still says how much of the
 * gate the scores capture (||B A||^2 alone could exceed ||W||^2). */
static loupe_status file_svd_energy(conv *cv, int l, lp_error *err) {
    const layer_in *li = &cv->li[l];
    layer_out *lo = &cv->lo[l];
    const size_t n_embd = (size_t)cv->n_embd, n_ff = (size_t)cv->ff[l], R = (size_t)lo->rank;
    float *w = malloc(n_ff * n_embd * sizeof *w); /* W, then W - B A: (n_ff, n_embd) */
    float *a = malloc(R * n_embd * sizeof *a), *b = malloc(n_ff * R * sizeof *b);
    loupe_status st = LOUPE_OK;
    if (!w || !a || !b) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for %s", cv->in, li->gate->name);
        goto out;
    }
    if (!lp_dequantize_row(li->gate->type, li->gate->data, w, (int64_t)(n_ff * n_embd)) ||
        !lp_dequantize_row(LP_TYPE_F16, lo->pred_a, a, (int64_t)(R * n_embd)) ||
        !lp_dequantize_row(LP_TYPE_F16, lo->pred_b, b, (int64_t)(n_ff * R))) {
        st = lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s: dequantization failed", cv->in, li->gate->name);
        goto out;
    }
    double norm2 = 0.0, res2 = 0.0;
    for (size_t i = 0; i < n_ff * n_embd; i++) norm2 += (double)w[i] * (double)w[i];
    if (!isfinite(norm2)) {
        st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s holds values that are not finite", cv->in, li->gate->name);
        goto out;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cv->ff[l], cv->n_embd, lo->rank, -1.0f, b, lo->rank, a, cv->n_embd,
                1.0f, w, cv->n_embd);
    for (size_t i = 0; i < n_ff * n_embd; i++) res2 += (double)w[i] * (double)w[i];
    double e = norm2 > 0.0 ? 1.0 - res2 / norm2 : 1.0;
    lo->energy = (float)(e > 1.0 ? 1.0 : e < 0.0 || !isfinite(e) ? 0.0 : e);
out:
    free(w);
    free(a);
    free(b);
    return st;
}

static loupe_status convert_layer(conv *cv, int l, lp_error *err) {
    const layer_in *li = &cv->li[l];
    layer_out *lo = &cv->lo[l];
    const size_t n_embd = (size_t)cv->n_embd, n_ff = (size_t)cv->ff[l];
    loupe_status st = LOUPE_OK;
    float *w = NULL, *d = NULL, *tile = NULL;

    /* calloc: the padding of every bundle is zero */
    lo->bundle = calloc(n_ff, cv->stride);
    if (!lo->bundle) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for %s's bundles", cv->in, li->gate->name);
    const uint8_t *gate = li->gate->data, *up = li->up->data;
    for (size_t i = 0; i < n_ff; i++) {
        memcpy(lo->bundle + i * cv->stride, gate + i * cv->gate_bytes, cv->gate_bytes);
        memcpy(lo->bundle + i * cv->stride + cv->gate_bytes, up + i * cv->up_bytes, cv->up_bytes);
    }

    const bool copy_down = li->down->type == cv->down_type && lp_type_block_size(cv->down_type) == 1;
    if (!copy_down) {
        d = malloc(n_embd * n_ff * sizeof *d);
        tile = malloc(TILE * n_embd * sizeof *tile);
        if (!d || !tile) {
            st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for %s", cv->in, li->down->name);
            goto out;
        }
        if (!lp_dequantize_row(li->down->type, li->down->data, d, (int64_t)(n_embd * n_ff))) {
            st = lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s: dequantization failed", cv->in, li->down->name);
            goto out;
        }
    }
    write_down_columns(cv, l, li->down, d, lo->bundle, tile);
    free(d);
    free(tile);
    d = tile = NULL;

    if (cv->p->predictor == LP_FLASH_PRED_SVD) {
        w = malloc(n_ff * n_embd * sizeof *w);
        if (!w) {
            st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for %s", cv->in, li->gate->name);
            goto out;
        }
        if (!lp_dequantize_row(li->gate->type, li->gate->data, w, (int64_t)(n_ff * n_embd))) {
            st = lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s: dequantization failed", cv->in, li->gate->name);
            goto out;
        }
        /* rank cap: predictor bytes (f16 A and B) within max_pred_frac of
         * this layer's FFN bytes in the input, in steps of RANK_STEP, at
         * least RANK_STEP, at most the matrix rank */
        const int mn = cv->n_embd < cv->ff[l] ? cv->n_embd : cv->ff[l];
        double ffn_bytes = (double)li->gate->nbytes + (double)li->up->nbytes + (double)li->down->nbytes;
        double cap = floor((double)cv->p->max_pred_frac * ffn_bytes / (2.0 * (double)(n_embd + n_ff)));
        int cap_rank = cap >= (double)mn ? mn : (int)cap / RANK_STEP * RANK_STEP;
        if (cap_rank < RANK_STEP) cap_rank = RANK_STEP;
        if (cap_rank > mn) cap_rank = mn;
        svd_job job = {.w = w, .m = cv->ff[l], .n = cv->n_embd, .fixed_rank = cv->p->rank, .max_rank = cap_rank,
                       .energy = cv->p->energy, .seed = cv->p->seed, .layer = l};
        loupe_status s = svd_layer(&job, &lo->rank, &lo->energy, &lo->pred_a, &lo->pred_b);
        if (s == LOUPE_ERR_FORMAT)
            st = lp_fail(err, s, "%s: tensor %s holds values that are not finite", cv->in, li->gate->name);
        else if (s == LOUPE_ERR_LIMIT)
            st = lp_fail(err, s, "%s: tensor %s: the predictor's factors exceed the f16 range", cv->in, li->gate->name);
        else if (s != LOUPE_OK)
            st = lp_fail(err, s, "%s: out of memory for the predictor of %s", cv->in, li->gate->name);
        if (st != LOUPE_OK) goto out;
    } else if (cv->p->predictor == LP_FLASH_PRED_FILE) {
        lo->rank = (int)li->pred_a->ne[1];
        lo->energy = NAN; /* "lowrank": no energy stated */
        if ((st = read_factor(cv, li->pred_a, &lo->pred_a, err)) != LOUPE_OK ||
            (st = read_factor(cv, li->pred_b, &lo->pred_b, err)) != LOUPE_OK)
            goto out;
        if (!strcmp(cv->pred_kind, "svd") && (st = file_svd_energy(cv, l, err)) != LOUPE_OK) goto out;
    }
    lo->done = true;
out:
    free(w);
    free(d);
    free(tile);
    return st;
}

static loupe_status add_tensor(lp_gguf_writer *wr, const conv *cv, const char *name, lp_type type, int64_t ne0, int64_t ne1,
                               const void *data, uint64_t *off, lp_error *err) {
    const int64_t ne[2] = {ne0, ne1};
    loupe_status st = lp_gguf_writer_add_tensor(wr, name, type, 2, ne, data);
    if (st != LOUPE_OK)
        return lp_fail(err, st, "%s: tensor %s cannot be written (%s)", cv->out, name, loupe_status_str(st));
    /* the writer's layout: back to back, each padded to the alignment */
    *off += round_up((uint64_t)lp_row_size(type, ne0) * (uint64_t)ne1, LP_FLASH_FILE_ALIGN);
    return LOUPE_OK;
}

/* The output's tensors in the input's order, with each layer's bundle and
 * predictor where its ffn_gate was, and the loupe.flash.* keys. */
static loupe_status build(conv *cv, lp_gguf_writer *wr, lp_error *err) {
    const lp_gguf *g = cv->g;
    loupe_status st;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if ((st = lp_gguf_writer_set_value(wr, g->kv[i].key, &g->kv[i].val)) != LOUPE_OK)
            return lp_fail(err, st, "%s: key %s cannot be copied (%s)", cv->in, g->kv[i].key, loupe_status_str(st));
    lp_gguf_writer_set_alignment(wr, LP_FLASH_FILE_ALIGN);

    uint64_t off = 0;
    char name[64];
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        int l = 0, part = ffn_part(t->name, &l);
        if (part > 0) continue; /* up, down: inside the bundles */
        if (part < 0) {
            st = lp_gguf_writer_add_tensor(wr, t->name, t->type, t->n_dims, t->ne, t->data);
            if (st != LOUPE_OK)
                return lp_fail(err, st, "%s: tensor %s cannot be copied (%s)", cv->in, t->name, loupe_status_str(st));
            off += round_up(t->nbytes, LP_FLASH_FILE_ALIGN);
            continue;
        }
        if ((st = convert_layer(cv, l, err)) != LOUPE_OK) return st;
        layer_out *lo = &cv->lo[l];
        lo->offset = off;
        snprintf(name, sizeof name, "blk.%d.ffn_bundle", l);
        if ((st = add_tensor(wr, cv, name, LP_TYPE_I8, (int64_t)cv->stride, cv->ff[l], lo->bundle, &off, err))) return st;
        if (!strcmp(cv->pred_kind, "none")) continue;
        snprintf(name, sizeof name, "blk.%d.ffn_pred_a", l);
        if ((st = add_tensor(wr, cv, name, LP_TYPE_F16, cv->n_embd, lo->rank, lo->pred_a, &off, err))) return st;
        snprintf(name, sizeof name, "blk.%d.ffn_pred_b", l);
        if ((st = add_tensor(wr, cv, name, LP_TYPE_F16, lo->rank, cv->ff[l], lo->pred_b, &off, err))) return st;
    }
    for (int l = 0; l < cv->n_layer; l++)
        if (!cv->lo[l].done) return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: layer %d was not converted", cv->in, l);

    const int nl = cv->n_layer;
    uint64_t *offsets = malloc((size_t)nl * sizeof *offsets);
    uint32_t *ranks = malloc((size_t)nl * sizeof *ranks);
    float *energy = malloc((size_t)nl * sizeof *energy);
    if (!offsets || !ranks || !energy) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", cv->in);
        goto out;
    }
    for (int l = 0; l < nl; l++) {
        offsets[l] = cv->lo[l].offset;
        ranks[l] = (uint32_t)cv->lo[l].rank;
        energy[l] = cv->lo[l].energy;
    }
    const char *slash = strrchr(cv->in, '/');
    /* ranks for any predictor; the energy for svd only (lp_flash_layout_read
     * requires it there and reads it as a fraction, which a trained
     * predictor's logits have no counterpart of) */
    const bool has_pred = strcmp(cv->pred_kind, "none") != 0, svd = !strcmp(cv->pred_kind, "svd");
    if ((st = lp_gguf_writer_set_u32(wr, "loupe.flash.version", LP_FLASH_VERSION)) ||
        (st = lp_gguf_writer_set_u32(wr, "loupe.flash.gate_type", (uint32_t)cv->gate_type)) ||
        (st = lp_gguf_writer_set_u32(wr, "loupe.flash.up_type", (uint32_t)cv->up_type)) ||
        (st = lp_gguf_writer_set_u32(wr, "loupe.flash.down_type", (uint32_t)cv->down_type)) ||
        (st = lp_gguf_writer_set_u32(wr, "loupe.flash.bundle_bytes", (uint32_t)cv->bundle_bytes)) ||
        (st = lp_gguf_writer_set_u32(wr, "loupe.flash.bundle_stride", (uint32_t)cv->stride)) ||
        (st = lp_gguf_writer_set_arr(wr, "loupe.flash.layer_offsets", LP_GGUF_UINT64, offsets, (uint64_t)nl)) ||
        (st = lp_gguf_writer_set_str(wr, "loupe.flash.predictor", cv->pred_kind)) ||
        (has_pred && (st = lp_gguf_writer_set_arr(wr, "loupe.flash.predictor_rank", LP_GGUF_UINT32, ranks, (uint64_t)nl))) ||
        (svd && (st = lp_gguf_writer_set_arr(wr, "loupe.flash.predictor_energy", LP_GGUF_FLOAT32, energy, (uint64_t)nl))) ||
        (st = lp_gguf_writer_set_str(wr, "loupe.flash.source", slash ? slash + 1 : cv->in)))
        st = lp_fail(err, st, "%s: the loupe.flash.* keys cannot be set (%s)", cv->out, loupe_status_str(st));
out:
    free(offsets);
    free(ranks);
    free(energy);
    return st;
}

static loupe_status check_params(const lp_flash_convert_params *p, lp_error *err) {
    if (p->predictor != LP_FLASH_PRED_SVD && p->predictor != LP_FLASH_PRED_NONE && p->predictor != LP_FLASH_PRED_FILE)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: unknown predictor %d", (int)p->predictor);
    if (p->predictor == LP_FLASH_PRED_FILE && !p->predictor_path)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: predictor file: no predictor_path");
    if (p->predictor != LP_FLASH_PRED_FILE && p->predictor_path)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: predictor_path %s is given, but the predictor is not "
                       "LP_FLASH_PRED_FILE", p->predictor_path);
    if (p->predictor == LP_FLASH_PRED_FILE && p->rank != 0)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: rank %d is given, but a predictor file sets the ranks",
                       p->rank);
    if (p->rank < 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: rank %d is negative", p->rank);
    if (!(p->energy > 0.0f && p->energy <= 1.0f))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: energy %g is not in (0, 1]", (double)p->energy);
    if (!(p->max_pred_frac > 0.0f && p->max_pred_frac <= 1.0f))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: max_pred_frac %g is not in (0, 1]",
                       (double)p->max_pred_frac);
    return LOUPE_OK;
}

loupe_status lp_flash_convert(const char *in_path, const char *out_path, const lp_flash_convert_params *params,
                              lp_flash_convert_report *rep, lp_error *err) {
    if (rep) memset(rep, 0, sizeof *rep);
    if (!in_path || !out_path) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_convert: NULL path");
    lp_flash_convert_params defaults = lp_flash_convert_default_params();
    const lp_flash_convert_params *p = params ? params : &defaults;
    loupe_status st = check_params(p, err);
    if (st != LOUPE_OK) return st;

    /* OUT must not be IN: the input stays mapped while OUT is renamed into place */
    struct stat si, so;
    if (stat(in_path, &si) == 0 && stat(out_path, &so) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: the output is the input file", out_path);
    if (p->predictor_path && stat(p->predictor_path, &si) == 0 && stat(out_path, &so) == 0 && si.st_dev == so.st_dev &&
        si.st_ino == so.st_ino)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: the output is the predictor file", out_path);

    conv cv = {.in = in_path, .out = out_path, .p = p};
    lp_gguf_writer *wr = NULL;
    lp_gguf *check = NULL;
    char *tmp = NULL;
    bool tmp_made = false;
    cv.g = lp_gguf_open(in_path, err);
    if (!cv.g) return err ? err->status : LOUPE_ERR_IO;
    if ((st = plan(&cv, err)) != LOUPE_OK) goto out;
    if (!(wr = lp_gguf_writer_new())) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", in_path);
        goto out;
    }
    if ((st = build(&cv, wr, err)) != LOUPE_OK) goto out;

    /* Write beside OUT under a fresh name, check what was written, then
     * rename: OUT is never a file that failed the check. */
    size_t n = strlen(out_path) + 16;
    if (!(tmp = malloc(n))) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", out_path);
        goto out;
    }
    snprintf(tmp, n, "%s.flashXXXXXX", out_path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        char eb[128];
        st = lp_fail(err, LOUPE_ERR_IO, "%s: cannot create a temporary file beside it: %s", out_path,
                     lp_strerror(errno, eb, sizeof eb));
        goto out;
    }
    close(fd);
    tmp_made = true;
    if ((st = lp_gguf_writer_write(wr, tmp, err)) != LOUPE_OK) goto out;
    lp_gguf_writer_free(wr);
    wr = NULL;

    lp_error cerr = {0};
    lp_flash_layout lay;
    check = lp_gguf_open(tmp, &cerr);
    if (!check || lp_flash_layout_read(check, &lay, &cerr) != LOUPE_OK) {
        st = lp_fail(err, LOUPE_ERR_INTERNAL, "%s: the written file does not check out: %s", out_path, cerr.msg);
        goto out;
    }
    for (int l = 0; l < cv.n_layer; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.ffn_bundle", l);
        const lp_gguf_tensor *t = &check->tensors[lp_gguf_find_tensor(check, name)];
        if (t->offset != cv.lo[l].offset || (check->data_offset + t->offset) % LP_FLASH_FILE_ALIGN != 0 ||
            memcmp(t->data, cv.lo[l].bundle, cv.stride * (size_t)cv.ff[l]) != 0) {
            st = lp_fail(err, LOUPE_ERR_INTERNAL, "%s: the written file does not check out: tensor %s differs from what was written",
                         out_path, name);
            goto out;
        }
    }
    lp_flash_convert_layer *layers = NULL;
    if (rep && !(layers = malloc((size_t)cv.n_layer * sizeof *layers))) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", out_path);
        goto out;
    }
    if (rename(tmp, out_path) != 0) {
        char eb[128];
        st = lp_fail(err, LOUPE_ERR_IO, "%s: cannot rename %s to it: %s", out_path, tmp, lp_strerror(errno, eb, sizeof eb));
        free(layers);
        goto out;
    }
    tmp_made = false;
    if (rep) {
        for (int l = 0; l < cv.n_layer; l++) layers[l] = (lp_flash_convert_layer){cv.lo[l].rank, cv.lo[l].energy};
        rep->layers = layers;
        rep->n_layer = cv.n_layer;
        rep->bundle_stride = cv.stride;
        rep->in_bytes = cv.g->file_size;
        rep->out_bytes = check->file_size;
    }
out:
    if (tmp_made) unlink(tmp);
    free(tmp);
    lp_gguf_close(check);
    lp_gguf_close(cv.pg);
    lp_gguf_writer_free(wr);
    if (cv.lo)
        for (int l = 0; l < cv.n_layer; l++) {
            free(cv.lo[l].bundle);
            free(cv.lo[l].pred_a);
            free(cv.lo[l].pred_b);
        }
    free(cv.li);
    free(cv.lo);
    free(cv.ff);
    lp_gguf_close(cv.g);
    return st;
}
