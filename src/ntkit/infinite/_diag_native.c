/* Native tile loop of ntkit.infinite.diag_fast (compiled on first use by ntkit.infinite.native).
 *
 * The "diag" programs of ntkit.infinite.conv_fast (convolutions and activations on the same-pixel
 * covariances, then a flattening read-out: the CNN-GP / CNTK without pooling of Novak et al. 2019)
 * do the same tiny, regular work for every pair of images: per pixel p of an H x W image
 *
 *   input  K(p) = (1 / C) sum_c x_c(p) x'_c(p)                                      (T = 0)
 *   CONV   K'(q) = w2 / (kh kw) sum_t K(q + t - pad) + b2,  T'(q) = w2 / (kh kw) sum_t T(q + t - pad) + K'(q)
 *          (stride 1, zero padding: taps outside the image are left out; rows of taps first, then columns)
 *   ACT    ABReLU: sqrt(det) = sqrt(max(v1 v2 - K^2, 0)), pi - theta = atan2(sqrt(det), -K),
 *          K' = (sqrt(det) + (pi - theta) K) k1 + K k2,  T' = T (ka (pi - theta) p1 p2 + kb (p1 + p2) + kc)
 *          with v1 = K(x, x)(p), v2 = K(x', x')(p) (the two images' own variances, p = [v > 0])
 *   FLAT   the read-out: the mean of K (and T) over the pixels, in double.
 *
 * _cntk_native.c runs this pair by pair; here one image x of a tile's rows is paired with L images x'
 * of its columns at once, in the lanes of a vector: every array is [pixel][lane] (L = 8 doubles or 16
 * floats: one AVX-512 register), the row image's values are broadcast, and the arc-cosine's atan2 and
 * sqrt run on whole vectors. Each lane does the same operations in the same order as _cntk_native.c
 * (fixed summation order, no contraction: -ffp-contract=off) but for atan2, which is atan2p of _atan2p.h (a
 * polynomial, within 1.5 eps of the exact atan2, where glibc's vector atan2 took 60% of the time): the
 * kernels agree with _cntk_native.c to about 1e-15 relative in double and float32 rounding in float.
 *
 * Column images and their variances come transposed in groups of L (ntkit.infinite.diag_fast): images
 * xbt[g][c * P + p][l] = x'_{g L + l, c}(p), variances vbt[g][k][l]; the tile's columns are padded to a
 * whole group (those lanes are computed and dropped).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_atan2p.h"

enum { OP_CONV = 1, OP_ACT = 2, OP_FLAT = 6 };

/* Op records as _cntk_native.c's (12 ints, 8 doubles); only these are accepted (diag_fast checks):
 *   CONV: i[1..8] = kh, kw, sh (1), sw (1), ph, pw, out_h, out_w;  d[0..1] = w2, b2
 *   ACT:  i[1] = offset of its variances in a row of vars;  d[0..4] = k1, k2, ka, kb, kc
 *   FLAT: the read-out (last op) */
#define NI 12
#define ND 8

#define DEFINE(T, SFX, L, ATAN2, SQRT)                                                                    \
                                                                                                          \
/* n[p][l] = (0 + sum_c a_c(p) b_c(p)[l]) / C, in the order of _cntk_native.c's input_. */               \
static void input_##SFX(const T *restrict a, const T *restrict bt, int C, int64_t P, T *restrict n) {  \
    const T inv = (T)1 / (T)C;                                                                            \
    for (int64_t p = 0; p < P; p++) {                                                                     \
        T acc[L];                                                                                         \
        _Pragma("omp simd")                                                                               \
        for (int l = 0; l < L; l++) acc[l] = 0;                                                           \
        for (int c = 0; c < C; c++) {                                                                     \
            const T av = a[(int64_t)c * P + p];                                                           \
            const T *b = bt + ((int64_t)c * P + p) * L;                                                   \
            _Pragma("omp simd")                                                                           \
            for (int l = 0; l < L; l++) acc[l] += av * b[l];                                              \
        }                                                                                                 \
        _Pragma("omp simd")                                                                               \
        for (int l = 0; l < L; l++) n[p * L + l] = acc[l] * inv;                                          \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* A stride-1 convolution: rows of taps into tmp (H x Wo), then columns into out (Ho x Wo), scaled:     \
   out = scale sum + (add ? add : b2). Taps in order, outside ones left out (as _cntk_native.c; a first  \
   0 + is dropped: exact but for the sign of a zero). 3-tap "same" rows and whole-row column sums are     \
   unrolled. */                                                                                           \
static void conv_##SFX(const T *restrict in, T *restrict tmp, T *restrict out, int H, int W, int Ho,    \
                       int Wo, int kh, int kw, int ph, int pw, T scale, T b2, const T *restrict add) {    \
    if (kw == 3 && pw == 1 && Wo == W && W >= 2) {                                                        \
        for (int h = 0; h < H; h++) {                                                                     \
            const T *x = in + (int64_t)h * W * L;                                                         \
            T *o = tmp + (int64_t)h * W * L;                                                              \
            _Pragma("omp simd")                                                                           \
            for (int l = 0; l < L; l++) o[l] = x[l] + x[L + l];                                           \
            const int64_t e1 = (int64_t)(W - 1) * L;                                                      \
            _Pragma("omp simd")                                                                           \
            for (int64_t e = L; e < e1; e++) o[e] = (x[e - L] + x[e]) + x[e + L];                         \
            _Pragma("omp simd")                                                                           \
            for (int64_t e = e1; e < e1 + L; e++) o[e] = x[e - L] + x[e];                                 \
        }                                                                                                 \
    } else {                                                                                              \
        for (int h = 0; h < H; h++)                                                                       \
            for (int r = 0; r < Wo; r++) {                                                                \
                T acc[L];                                                                                 \
                _Pragma("omp simd")                                                                       \
                for (int l = 0; l < L; l++) acc[l] = 0;                                                   \
                for (int tap = 0; tap < kw; tap++) {                                                      \
                    const int c = r + tap - pw;                                                           \
                    if (c < 0 || c >= W) continue;                                                        \
                    const T *src = in + ((int64_t)h * W + c) * L;                                         \
                    _Pragma("omp simd")                                                                   \
                    for (int l = 0; l < L; l++) acc[l] += src[l];                                         \
                }                                                                                         \
                T *dst = tmp + ((int64_t)h * Wo + r) * L;                                                 \
                _Pragma("omp simd")                                                                       \
                for (int l = 0; l < L; l++) dst[l] = acc[l];                                              \
            }                                                                                             \
    }                                                                                                     \
    const int64_t row = (int64_t)Wo * L;                                                                  \
    for (int q = 0; q < Ho; q++) {                                                                        \
        int t0 = 0, t1 = kh; /* taps with 0 <= q + t - ph < H */                                          \
        while (t0 < kh && q + t0 - ph < 0) t0++;                                                          \
        while (t1 > t0 && q + t1 - 1 - ph >= H) t1--;                                                     \
        T *o = out + q * row;                                                                             \
        const T *ad = add ? add + q * row : 0;                                                            \
        const T *a = tmp + (int64_t)(q + t0 - ph) * row, *b = a + row, *c = b + row;                     \
        if (t1 - t0 == 3) {                                                                               \
            _Pragma("omp simd")                                                                           \
            for (int64_t e = 0; e < row; e++) o[e] = ((a[e] + b[e]) + c[e]) * scale + (ad ? ad[e] : b2);  \
            continue;                                                                                     \
        }                                                                                                 \
        if (t1 - t0 == 2) {                                                                               \
            _Pragma("omp simd")                                                                           \
            for (int64_t e = 0; e < row; e++) o[e] = (a[e] + b[e]) * scale + (ad ? ad[e] : b2);           \
            continue;                                                                                     \
        }                                                                                                 \
        _Pragma("omp simd")                                                                               \
        for (int64_t e = 0; e < row; e++) o[e] = 0;                                                       \
        for (int t = t0; t < t1; t++) {                                                                   \
            const T *src = tmp + (int64_t)(q + t - ph) * row;                                             \
            _Pragma("omp simd")                                                                           \
            for (int64_t e = 0; e < row; e++) o[e] += src[e];                                             \
        }                                                                                                 \
        _Pragma("omp simd")                                                                               \
        for (int64_t e = 0; e < row; e++) o[e] = o[e] * scale + (ad ? ad[e] : b2);                        \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* ABReLU dual maps in place: n (and t unless NULL) [p][l]; va[p] the row image's variances, vb[p][l]   \
   the column images'. */                                                                                 \
static void act_##SFX(T *restrict n, T *restrict t, const T *restrict va, const T *restrict vb,         \
                      int64_t P, const double *d) {                                                       \
    const T k1 = (T)d[0], k2 = (T)d[1], ka = (T)d[2], kb = (T)d[3], kc = (T)d[4];                          \
    for (int64_t p = 0; p < P; p++) {                                                                     \
        const T a1 = va[p];                                                                               \
        const T p1 = a1 > (T)0 ? (T)1 : (T)0;                                                             \
        T *c = n + p * L;                                                                                 \
        const T *v2 = vb + p * L;                                                                         \
        if (t) {                                                                                          \
            T *th = t + p * L;                                                                            \
            _Pragma("omp simd")                                                                           \
            for (int l = 0; l < L; l++) {                                                                 \
                T a2 = v2[l], cc = c[l];                                                                  \
                T det = a1 * a2 - cc * cc;                                                                \
                det = det > (T)0 ? det : (T)0;                                                            \
                T sq = SQRT(det);                                                                         \
                T pmt = ATAN2(sq, -cc);                                                                   \
                T p2 = a2 > (T)0 ? (T)1 : (T)0;                                                           \
                th[l] = th[l] * (pmt * ka * (p1 * p2) + (p1 + p2) * kb + kc);                             \
                c[l] = (sq + pmt * cc) * k1 + cc * k2;                                                    \
            }                                                                                             \
        } else {                                                                                          \
            _Pragma("omp simd")                                                                           \
            for (int l = 0; l < L; l++) {                                                                 \
                T a2 = v2[l], cc = c[l];                                                                  \
                T det = a1 * a2 - cc * cc;                                                                \
                det = det > (T)0 ? det : (T)0;                                                            \
                T sq = SQRT(det);                                                                         \
                T pmt = ATAN2(sq, -cc);                                                                   \
                c[l] = (sq + pmt * cc) * k1 + cc * k2;                                                    \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* Rows [r0, r1) of the tile: row i is the image ia[i] (xa[ia[i]], C x H0 x W0; variances va[ia[i]], var_len) \
   against the nb column images (groups of L: xbt (ng, C H0 W0, L), vbt (ng, var_len, L)). upper: only   \
   the columns j >= i are written. out_n[i * ldo + j] (double), out_t alike (NULL: NNGP only). Returns 0, \
   -1 if out of memory. */                                                                                \
int ntk_diag_tile_##SFX(const T *xa, const int64_t *ia, const T *xbt, const T *va, const T *vbt,        \
                        int64_t var_len, int C,                                                           \
                        int H0, int W0, int64_t r0, int64_t r1, int64_t nb, int upper, const int *ops,     \
                        const double *dps, int n_ops, double *out_n, double *out_t, int64_t ldo) {         \
    int64_t P0 = (int64_t)H0 * W0, Pm = P0;                                                               \
    for (int o = 0; o < n_ops; o++) {                                                                     \
        const int *q = ops + o * NI;                                                                      \
        if (q[0] == OP_CONV && (int64_t)q[7] * q[8] > Pm) Pm = (int64_t)q[7] * q[8];                      \
    }                                                                                                     \
    T *buf = (T *)malloc((size_t)(6 * Pm * L) * sizeof(T));                                               \
    if (!buf) return -1;                                                                                  \
    const int with_ntk = out_t != 0;                                                                      \
    const int64_t img = (int64_t)C * P0, ng = (nb + L - 1) / L;                                           \
    for (int64_t i = r0; i < r1; i++) {                                                                   \
        for (int64_t g = upper ? i / L : 0; g < ng; g++) {                                                \
            T *n = buf, *t = buf + Pm * L, *un = buf + 2 * Pm * L, *ut = buf + 3 * Pm * L;                \
            T *tn = buf + 4 * Pm * L, *tt = buf + 5 * Pm * L;                                             \
            int H = H0, W = W0, t_zero = 1; /* t_zero: T is still 0 (the input's) */                      \
            input_##SFX(xa + ia[i] * img, xbt + g * img * L, C, P0, n);                                   \
            double rn[L], rt[L];                                                                          \
            for (int l = 0; l < L; l++) { rn[l] = 0; rt[l] = 0; }                                         \
            for (int o = 0; o < n_ops; o++) {                                                             \
                const int *ip = ops + o * NI;                                                             \
                const double *d = dps + o * ND;                                                           \
                if (ip[0] == OP_CONV) {                                                                   \
                    const int kh = ip[1], kw = ip[2], ph = ip[5], pw = ip[6], Ho = ip[7], Wo = ip[8];     \
                    const T scale = (T)(d[0] / (double)(kh * kw)), b2 = (T)d[1];                          \
                    conv_##SFX(n, tn, un, H, W, Ho, Wo, kh, kw, ph, pw, scale, b2, 0);                     \
                    if (with_ntk) {                                                                       \
                        const int64_t size = (int64_t)Ho * Wo * L;                                        \
                        if (t_zero) /* scale * 0 + K' */                                                  \
                            memcpy(ut, un, size * sizeof(T));                                             \
                        else                                                                              \
                            conv_##SFX(t, tt, ut, H, W, Ho, Wo, kh, kw, ph, pw, scale, b2, un);            \
                        t_zero = 0;                                                                       \
                        T *s_ = t; t = ut; ut = s_;                                                       \
                    }                                                                                     \
                    T *s_ = n; n = un; un = s_;                                                           \
                    H = Ho; W = Wo;                                                                       \
                } else if (ip[0] == OP_ACT) {                                                             \
                    const int64_t P = (int64_t)H * W;                                                     \
                    if (with_ntk && t_zero) { memset(t, 0, P * L * sizeof(T)); t_zero = 0; }              \
                    act_##SFX(n, with_ntk ? t : 0, va + ia[i] * var_len + ip[1], vbt + (g * var_len + ip[1]) * L, \
                              P, d);                                                                      \
                } else if (ip[0] == OP_FLAT) {                                                            \
                    const int64_t P = (int64_t)H * W;                                                     \
                    if (with_ntk && t_zero) { memset(t, 0, P * L * sizeof(T)); t_zero = 0; }              \
                    for (int64_t p = 0; p < P; p++) {                                                     \
                        _Pragma("omp simd")                                                               \
                        for (int l = 0; l < L; l++) rn[l] += (double)n[p * L + l];                        \
                        if (with_ntk) {                                                                   \
                            _Pragma("omp simd")                                                           \
                            for (int l = 0; l < L; l++) rt[l] += (double)t[p * L + l];                    \
                        }                                                                                 \
                    }                                                                                     \
                    for (int l = 0; l < L; l++) { rn[l] /= (double)P; rt[l] /= (double)P; }               \
                }                                                                                         \
            }                                                                                             \
            for (int l = 0; l < L; l++) {                                                                 \
                const int64_t j = g * L + l;                                                              \
                if (j >= nb || (upper && j < i)) continue;                                                \
                out_n[i * ldo + j] = rn[l];                                                               \
                if (with_ntk) out_t[i * ldo + j] = rt[l];                                                 \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    free(buf);                                                                                            \
    return 0;                                                                                             \
}

DEFINE(float, f32, 16, atan2p_f32, sqrtf)
DEFINE(double, f64, 8, atan2p_f64, sqrt)
