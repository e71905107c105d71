/* Native ABReLU layer loop of ntkit.infinite.fused (compiled on first use by ntkit.infinite.native).
 *
 * For a centred bivariate Gaussian with variances (v1, v2) and covariance c, the ABReLU activation
 * sigma(u) = a u (u < 0), b u (u >= 0), d = b - a, gives (Cho & Saul 2009)
 *
 *     sqrt(det) = sqrt(max(v1 v2 - c^2, 0)),   pi - theta = atan2(sqrt(det), -c)
 *     Sigma'    = w2 [d^2 (sqrt(det) + (pi - theta) c) / (2 pi) + a b c] + beta^2           (k1, k2, b2)
 *     SigmaDot  = w2 [a^2 + a d (p1 + p2) / 2 + d^2 (pi - theta) / (2 pi) p1 p2],  p = [v > 0]
 *     Theta'    = Sigma' + Theta SigmaDot                                              (ka, kb, kc, ks)
 *
 * This is the closed form of ntkit.activations.arccos.abrelu_closed_form; the constants k[] are those of
 * abrelu_constants(a, b, w2, factored=True) (and beta^2), passed in by ntkit.infinite.native: none is
 * derived here.
 *
 * Every entry, full block or ragged tail, goes through the same LANES-wide vector code (tails are
 * padded), so a value never depends on its position in a tile: tiled, one-shot and distributed
 * results are bitwise identical. Compiled with -ffp-contract=off: v1 v2 - c^2 of a duplicated input
 * (c == v1 == v2) is exactly 0, so its angle is exactly 0 at every layer, as in ntkit.fc_kernel.
 * The per-row variances of every layer come from the same arithmetic (layer_diag on (v, v, v)).
 */
#include <math.h>
#include <stdint.h>

#pragma omp declare simd notinbranch
extern float atan2f(float, float);
#pragma omp declare simd notinbranch
extern double atan2(double, double);

#define LANES 64

/* One ABReLU layer on LANES entries: (A1, A2) variances, c covariance, th NTK (in place). */
#define LAYER_BODY(T, ATAN2, SQRT, A1, A2)                                                            \
    _Pragma("omp simd")                                                                                 \
    for (int q = 0; q < LANES; q++) {                                                                   \
        T a1 = A1, a2 = A2, cc = c[q];                                                                  \
        T det = a1 * a2 - cc * cc;                                                                      \
        det = det > (T)0 ? det : (T)0;                                                                  \
        T sq = SQRT(det);                                                                               \
        T pmt = ATAN2(sq, -cc);                                                                         \
        T cn = (sq + pmt * cc) * k1 + cc * k2 + b2;                                                     \
        if (ntk) {                                                                                      \
            T p1 = a1 > (T)0 ? (T)1 : (T)0, p2 = a2 > (T)0 ? (T)1 : (T)0;                              \
            T sd = pmt * ka * (p1 * p2) + (p1 + p2) * kb + kc;                                          \
            th[q] = cn + ks * th[q] * sd;                                                               \
        }                                                                                               \
        c[q] = cn;                                                                                      \
    }

#define CONSTS(T)                                                                                      \
    const T k1 = (T)k[0], k2 = (T)k[1], b2 = (T)k[2], ka = (T)k[3], kb = (T)k[4], kc = (T)k[5],         \
            ks = (T)k[6];

#define DEFINE(T, SFX, ATAN2, SQRT)                                                                   \
static inline void layer_row_##SFX(T v1, const T *restrict v2, T *restrict c, T *restrict th,         \
                                   const double *restrict k, int ntk) {                               \
    CONSTS(T)                                                                                           \
    LAYER_BODY(T, ATAN2, SQRT, v1, v2[q])                                                               \
}                                                                                                       \
static inline void layer_diag_##SFX(const T *restrict v, T *restrict c, T *restrict th,              \
                                    const double *restrict k, int ntk) {                              \
    CONSTS(T)                                                                                           \
    LAYER_BODY(T, ATAN2, SQRT, v[q], v[q])                                                              \
}                                                                                                       \
                                                                                                        \
/* Per-row variances of layers 1..depth-1 from those of layer 0 (vars: depth x n, row 0 given). */      \
void ntk_abrelu_vars_##SFX(T *vars, int64_t n, int depth, const double *k) {                           \
    T v[LANES], c[LANES], th[LANES];                                                                    \
    for (int64_t j0 = 0; j0 < n; j0 += LANES) {                                                         \
        int64_t m = n - j0 < LANES ? n - j0 : LANES;                                                    \
        for (int l = 0; l + 1 < depth; l++) {                                                           \
            for (int q = 0; q < LANES; q++) { v[q] = q < m ? vars[l * n + j0 + q] : (T)1; c[q] = v[q]; th[q] = 0; } \
            layer_diag_##SFX(v, c, th, k, 0);                                                           \
            for (int q = 0; q < m; q++) vars[(l + 1) * n + j0 + q] = c[q];                              \
        }                                                                                               \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
/* Diagonal: v0 (n) layer-1 variances -> NNGP (n) and NTK (n, or NULL) of the network's output. */       \
void ntk_abrelu_diag_##SFX(const T *v0, int64_t n, int depth, const double *k, T *nngp, T *ntk) {     \
    T v[LANES], c[LANES], th[LANES];                                                                    \
    const int with_ntk = ntk != 0;                                                                      \
    for (int64_t j0 = 0; j0 < n; j0 += LANES) {                                                         \
        int64_t m = n - j0 < LANES ? n - j0 : LANES;                                                    \
        for (int q = 0; q < LANES; q++) { c[q] = q < m ? v0[j0 + q] : (T)1; th[q] = c[q]; }             \
        for (int l = 0; l < depth; l++) {                                                               \
            for (int q = 0; q < LANES; q++) v[q] = c[q];                                                \
            layer_diag_##SFX(v, c, th, k, with_ntk);                                                    \
        }                                                                                               \
        for (int q = 0; q < m; q++) nngp[j0 + q] = c[q];                                                \
        if (with_ntk) for (int q = 0; q < m; q++) ntk[j0 + q] = th[q];                                  \
    }                                                                                                   \
}                                                                                                       \
/* Rows [r0, r1) of a tile: nngp holds x1.x2 (unscaled) on entry and the NNGP on exit; ntk (or NULL)  \
   receives the NTK. Columns from (upper ? row : 0) to n2. vars1: depth x n1s, vars2: depth x n2p      \
   (n2p >= n2 rounded up to LANES, padded with 1). dup[i]: row i of x1 equals some row of x2. */       \
void ntk_abrelu_tile_##SFX(T *nngp, int64_t ld_n, T *ntk, int64_t ld_t, int64_t r0, int64_t r1, int64_t n2, \
                           int upper, const T *vars1, int64_t n1s, const T *vars2, int64_t n2p,         \
                           const uint8_t *dup, const int64_t *id1, const int64_t *id2, int depth,       \
                           double scale_in, const double *k) {                                          \
    T c[LANES], th[LANES];                                                                              \
    const T b2 = (T)k[2], s_in = (T)scale_in;                                                           \
    const int with_ntk = ntk != 0;                                                                      \
    for (int64_t i = r0; i < r1; i++) {                                                                 \
        T *gn = nngp + i * ld_n;                                                                        \
        T *gt = with_ntk ? ntk + i * ld_t : 0;                                                          \
        for (int64_t j = upper ? i : 0; j < n2; j += LANES) {                                           \
            int64_t m = n2 - j < LANES ? n2 - j : LANES;                                                \
            if (m == LANES) {                                                                           \
                _Pragma("omp simd")                                                                     \
                for (int q = 0; q < LANES; q++) { c[q] = gn[j + q] * s_in + b2; }                       \
            } else {                                                                                    \
                for (int q = 0; q < LANES; q++) c[q] = (q < m ? gn[j + q] : (T)0) * s_in + b2;         \
            }                                                                                           \
            if (dup[i])                                                                                 \
                for (int q = 0; q < m; q++) if (id1[i] == id2[j + q]) c[q] = vars1[i];                  \
            for (int q = 0; q < LANES; q++) th[q] = c[q];                                               \
            for (int l = 0; l < depth; l++)                                                             \
                layer_row_##SFX(vars1[l * n1s + i], vars2 + l * n2p + j, c, th, k, with_ntk);           \
            for (int q = 0; q < m; q++) gn[j + q] = c[q];                                               \
            if (with_ntk) for (int q = 0; q < m; q++) gt[j + q] = th[q];                                \
        }                                                                                               \
    }                                                                                                   \
}

DEFINE(float, f32, atan2f, sqrtf)
DEFINE(double, f64, atan2, sqrt)
