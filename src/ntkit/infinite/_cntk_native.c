/* Native spatial kernel loop of ntkit.infinite.conv_fast (compiled on first use by ntkit.infinite.native).
 *
 * For one pair of images (x, x') the covariance of one channel, K(p, p') over pixels p of x and p' of
 * x', goes through a program of layers (Arora et al. 2019; Novak et al. 2019):
 *
 *   CONV  (filter kh x kw, stride, zero padding; NTK parameterization)
 *         K'(q, q') = w2 / |F| sum_t K(s q + t - pad, s q' + t - pad) + b2      (same offset t on both sides)
 *         T'(q, q') = w2 / |F| sum_t T(...)                        + K'(q, q')
 *   ACT   ABReLU sigma(u) = a u (u < 0), b u (u >= 0), d = b - a, for (u, v) ~ N(0, [[v1, c], [c, v2]]):
 *         sqrt(det) = sqrt(max(v1 v2 - c^2, 0)),  pi - theta = atan2(sqrt(det), -c)
 *         K' = (sqrt(det) + (pi - theta) c) k1 + c k2,   k1 = d^2 / (2 pi), k2 = a b       (Cho & Saul 2009)
 *         T' = T (ka (pi - theta) p1 p2 + kb (p1 + p2) + kc),  p = [v > 0],  ka = k1, kb = a d / 2, kc = a^2
 *         (ntkit.activations.arccos.abrelu_closed_form; the constants come from its abrelu_constants(a, b),
 *         passed in by ntkit.infinite.conv_fast: none is derived here)
 *   POOL  average pooling (window, stride, no padding): independent offsets on the two sides
 *   DIAG  keep the same-pixel entries only (full -> diag layout)
 *   UPS   the zero-upsampling of a transposed convolution, on both sides: K'(a + s i, a + s i') = K(i, i'), 0
 *         where either pixel is an inserted zero (then a stride-1 "valid" CONV: ntkit.infinite.ops.conv_transpose)
 *   GAP / FLAT   the read-out: mean of all pixel pairs / of the same-pixel entries (in double)
 *   FORK / JOIN  branches run from the same input and merged by a weighted sum (ntkit.nn.Parallel's sum,
 *         K = sum_i K_i, and concatenation, K = sum_i f_i K_i with f_i the channel fractions; T alike):
 *         FORK saves the current covariances in its slot; each branch's ops follow, then a JOIN adds
 *         w_i K_i, w_i T_i to the slot's accumulator and restores the saved input for the next branch (the
 *         last JOIN makes the accumulator current). Slots are nesting depths (at most MAX_SLOTS).
 *
 * Layouts: "full" K[h][h'][w][w'] (both images' rows, then both images' columns); "diag" K[h][w].
 * The variances v1, v2 of an activation are the same-pixel entries of each image's own covariance
 * at that layer: the self pair (x, x) computes and stores them (vars), the other pairs read them.
 * Stencil and pooling sums run in a fixed order and are not contracted (-ffp-contract=off), so the
 * self pair's variances are bit for bit its own diagonal entries (a pixel against itself has angle 0).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma omp declare simd notinbranch
extern float atan2f(float, float);
#pragma omp declare simd notinbranch
extern double atan2(double, double);

enum { OP_CONV = 1, OP_ACT = 2, OP_POOL = 3, OP_DIAG = 4, OP_GAP = 5, OP_FLAT = 6, OP_FORK = 7, OP_JOIN = 8, OP_UPS = 9 };

/* One op record: 12 ints (op, then per op: see below), 8 doubles.
 *   CONV: i[1..8] = kh, kw, sh, sw, ph, pw, out_h, out_w;  d[0..1] = w2, b2
 *   ACT:  i[1] = offset of its variances in a row of vars;  d[0..4] = k1, k2, ka, kb, kc
 *   POOL: i[1..6] = kh, kw, sh, sw, out_h, out_w
 *   UPS:  i[1..6] = sh, sw, pad_h, pad_w (zeros before), out_h, out_w
 *   FORK: i[1] = slot;  JOIN: i[1] = slot, i[2] = 1 for the last branch;  d[0] = the branch's weight
 */
#define NI 12
#define ND 8
#define MAX_SLOTS 8

#define DEFINE(T, SFX, ATAN2, SQRT)                                                                     \
                                                                                                          \
static void input_##SFX(const T *xa, const T *xb, int C, int H, int W, int full, T *n, T *t) {          \
    const int P = H * W;                                                                                  \
    const int64_t size = full ? (int64_t)P * P : P;                                                       \
    memset(n, 0, size * sizeof(T));                                                                       \
    if (t) memset(t, 0, size * sizeof(T));                                                                \
    for (int c = 0; c < C; c++) {                                                                         \
        const T *a = xa + (int64_t)c * P, *b = xb + (int64_t)c * P;                                       \
        if (!full) {                                                                                      \
            for (int p = 0; p < P; p++) n[p] += a[p] * b[p];                                              \
            continue;                                                                                     \
        }                                                                                                 \
        for (int h = 0; h < H; h++)                                                                       \
            for (int h2 = 0; h2 < H; h2++)                                                                \
                for (int w = 0; w < W; w++) {                                                             \
                    const T av = a[h * W + w];                                                            \
                    const T *brow = b + h2 * W;                                                           \
                    T *dst = n + (((int64_t)h * H + h2) * W + w) * W;                                     \
                    _Pragma("omp simd")                                                                   \
                    for (int w2 = 0; w2 < W; w2++) dst[w2] += av * brow[w2];                              \
                }                                                                                         \
    }                                                                                                     \
    const T inv = (T)1 / (T)C;                                                                            \
    for (int64_t q = 0; q < size; q++) n[q] *= inv;                                                       \
}                                                                                                         \
                                                                                                          \
/* Sum over the filter taps along w (full: on w and w' together) into dst, zero padding. */              \
static void stencil_w_##SFX(const T *src, T *dst, int H, int W, int Wo, int k, int s, int pad, int full) { \
    const int rows = full ? H * H : H;                                                                    \
    const int64_t in_block = full ? (int64_t)W * W : W, out_block = full ? (int64_t)Wo * Wo : Wo;         \
    memset(dst, 0, (size_t)rows * out_block * sizeof(T));                                                 \
    for (int tap = 0; tap < k; tap++) {                                                                   \
        int r0 = 0, r1 = Wo; /* valid r: 0 <= r s + tap - pad < W */                                      \
        while (r0 < Wo && r0 * s + tap - pad < 0) r0++;                                                   \
        while (r1 > r0 && (r1 - 1) * s + tap - pad >= W) r1--;                                            \
        for (int row = 0; row < rows; row++) {                                                            \
            const T *in = src + row * in_block;                                                           \
            T *out = dst + row * out_block;                                                               \
            if (!full) {                                                                                  \
                for (int r = r0; r < r1; r++) out[r] += in[r * s + tap - pad];                            \
                continue;                                                                                 \
            }                                                                                             \
            for (int r = r0; r < r1; r++) {                                                               \
                const T *irow = in + (int64_t)(r * s + tap - pad) * W + tap - pad;                        \
                T *orow = out + (int64_t)r * Wo;                                                          \
                if (s == 1) {                                                                             \
                    _Pragma("omp simd")                                                                   \
                    for (int r2 = r0; r2 < r1; r2++) orow[r2] += irow[r2];                                \
                } else {                                                                                  \
                    for (int r2 = r0; r2 < r1; r2++) orow[r2] += irow[(int64_t)r2 * s];                   \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* Sum over the filter taps along h (full: on h and h' together) of blocks of `block` entries. */        \
static void stencil_h_##SFX(const T *src, T *dst, int H, int Ho, int64_t block, int k, int s, int pad,  \
                            int full) {                                                                   \
    memset(dst, 0, (size_t)(full ? Ho * Ho : Ho) * block * sizeof(T));                                    \
    for (int tap = 0; tap < k; tap++) {                                                                   \
        int q0 = 0, q1 = Ho;                                                                              \
        while (q0 < Ho && q0 * s + tap - pad < 0) q0++;                                                   \
        while (q1 > q0 && (q1 - 1) * s + tap - pad >= H) q1--;                                            \
        for (int q = q0; q < q1; q++) {                                                                   \
            const int hin = q * s + tap - pad;                                                            \
            if (!full) {                                                                                  \
                const T *in = src + hin * block;                                                          \
                T *out = dst + q * block;                                                                 \
                _Pragma("omp simd")                                                                       \
                for (int64_t e = 0; e < block; e++) out[e] += in[e];                                      \
                continue;                                                                                 \
            }                                                                                             \
            for (int q2 = q0; q2 < q1; q2++) {                                                            \
                const T *in = src + ((int64_t)hin * H + (q2 * s + tap - pad)) * block;                    \
                T *out = dst + ((int64_t)q * Ho + q2) * block;                                            \
                _Pragma("omp simd")                                                                       \
                for (int64_t e = 0; e < block; e++) out[e] += in[e];                                      \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
static void upsample_##SFX(const T *src, T *dst, int H, int W, int full, const int *ip) {                 \
    const int sh = ip[1], sw = ip[2], ph = ip[3], pw = ip[4], Ho = ip[5], Wo = ip[6];                     \
    if (!full) {                                                                                          \
        memset(dst, 0, (size_t)Ho * Wo * sizeof(T));                                                      \
        for (int h = 0; h < H; h++)                                                                       \
            for (int w = 0; w < W; w++) dst[(int64_t)(ph + sh * h) * Wo + pw + sw * w] = src[(int64_t)h * W + w]; \
        return;                                                                                           \
    }                                                                                                     \
    memset(dst, 0, (size_t)Ho * Ho * Wo * Wo * sizeof(T));                                                \
    for (int h = 0; h < H; h++)                                                                           \
        for (int h2 = 0; h2 < H; h2++)                                                                    \
            for (int w = 0; w < W; w++) {                                                                 \
                const T *in = src + (((int64_t)h * H + h2) * W + w) * W;                                  \
                T *out = dst + (((int64_t)(ph + sh * h) * Ho + ph + sh * h2) * Wo + pw + sw * w) * Wo + pw; \
                for (int w2 = 0; w2 < W; w2++) out[(int64_t)sw * w2] = in[w2];                            \
            }                                                                                             \
}                                                                                                         \
                                                                                                          \
static void pool_##SFX(const T *src, T *tmp, T *dst, int H, int W, const int *ip) {                      \
    const int kh = ip[1], kw = ip[2], sh = ip[3], sw = ip[4], Ho = ip[5], Wo = ip[6];                     \
    /* along w and w' (independent offsets) */                                                            \
    const T inv_w = (T)1 / (T)(kw * kw), inv_h = (T)1 / (T)(kh * kh);                                     \
    for (int row = 0; row < H * H; row++) {                                                               \
        const T *in = src + (int64_t)row * W * W;                                                         \
        T *out = tmp + (int64_t)row * Wo * Wo;                                                            \
        for (int r = 0; r < Wo; r++)                                                                      \
            for (int r2 = 0; r2 < Wo; r2++) {                                                             \
                T acc = 0;                                                                                \
                for (int j = 0; j < kw; j++)                                                              \
                    for (int j2 = 0; j2 < kw; j2++) acc += in[(int64_t)(r * sw + j) * W + r2 * sw + j2];  \
                out[r * Wo + r2] = acc * inv_w;                                                           \
            }                                                                                             \
    }                                                                                                     \
    const int64_t block = (int64_t)Wo * Wo;                                                               \
    for (int q = 0; q < Ho; q++)                                                                          \
        for (int q2 = 0; q2 < Ho; q2++) {                                                                 \
            T *out = dst + ((int64_t)q * Ho + q2) * block;                                                \
            memset(out, 0, block * sizeof(T));                                                            \
            for (int i = 0; i < kh; i++)                                                                  \
                for (int i2 = 0; i2 < kh; i2++) {                                                         \
                    const T *in = tmp + ((int64_t)(q * sh + i) * H + (q2 * sh + i2)) * block;             \
                    _Pragma("omp simd")                                                                   \
                    for (int64_t e = 0; e < block; e++) out[e] += in[e];                                  \
                }                                                                                         \
            _Pragma("omp simd")                                                                           \
            for (int64_t e = 0; e < block; e++) out[e] *= inv_h;                                          \
        }                                                                                                 \
}                                                                                                         \
                                                                                                          \
/* ABReLU dual maps on a block of m entries: c (in place), th (in place or NULL), variances v1 scalar    \
   or vector (stride s1: 0 or 1) and v2 vector. */                                                        \
static inline void act_block_##SFX(T *restrict c, T *restrict th, const T *restrict v1, int s1,          \
                                   const T *restrict v2, int64_t m, const double *d) {                     \
    const T k1 = (T)d[0], k2 = (T)d[1], ka = (T)d[2], kb = (T)d[3], kc = (T)d[4];                          \
    if (th) {                                                                                             \
        _Pragma("omp simd")                                                                               \
        for (int64_t q = 0; q < m; q++) {                                                                 \
            T a1 = v1[q * s1], a2 = v2[q], cc = c[q];                                                     \
            T det = a1 * a2 - cc * cc;                                                                    \
            det = det > (T)0 ? det : (T)0;                                                                \
            T sq = SQRT(det);                                                                             \
            T pmt = ATAN2(sq, -cc);                                                                       \
            T p1 = a1 > (T)0 ? (T)1 : (T)0, p2 = a2 > (T)0 ? (T)1 : (T)0;                                 \
            th[q] = th[q] * (pmt * ka * (p1 * p2) + (p1 + p2) * kb + kc);                                 \
            c[q] = (sq + pmt * cc) * k1 + cc * k2;                                                        \
        }                                                                                                 \
    } else {                                                                                              \
        _Pragma("omp simd")                                                                               \
        for (int64_t q = 0; q < m; q++) {                                                                 \
            T a1 = v1[q * s1], a2 = v2[q], cc = c[q];                                                     \
            T det = a1 * a2 - cc * cc;                                                                    \
            det = det > (T)0 ? det : (T)0;                                                                \
            T sq = SQRT(det);                                                                             \
            T pmt = ATAN2(sq, -cc);                                                                       \
            c[q] = (sq + pmt * cc) * k1 + cc * k2;                                                        \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
static void act_##SFX(T *n, T *t, const T *va, const T *vb, int H, int W, int full, const double *d) {  \
    if (!full) {                                                                                          \
        act_block_##SFX(n, t, va, 1, vb, (int64_t)H * W, d);                                              \
        return;                                                                                           \
    }                                                                                                     \
    for (int h = 0; h < H; h++)                                                                           \
        for (int h2 = 0; h2 < H; h2++)                                                                    \
            for (int w = 0; w < W; w++) {                                                                 \
                const int64_t off = (((int64_t)h * H + h2) * W + w) * W;                                  \
                act_block_##SFX(n + off, t ? t + off : 0, va + h * W + w, 0, vb + h2 * W, W, d);          \
            }                                                                                             \
}                                                                                                         \
                                                                                                          \
static void diagonal_##SFX(const T *n, T *out, int H, int W) {                                           \
    for (int h = 0; h < H; h++)                                                                           \
        for (int w = 0; w < W; w++) out[h * W + w] = n[(((int64_t)h * H + h) * W + w) * W + w];          \
}                                                                                                         \
                                                                                                          \
/* Full layout: one output block (q, q2) (Wo x Wo entries) of a convolution, the sum over the filter taps \
   in a fixed order (rows, then columns), scaled: K' = scale sum + b2, T' = scale sum_T + K'. */          \
static void conv_block_##SFX(const T *in_n, const T *in_t, T *on, T *ot, int H, int W, int Wo, int q,   \
                             int q2, const int *ip, T scale, T b2, T *save) {                            \
    const int kh = ip[1], kw = ip[2], sh = ip[3], sw = ip[4], ph = ip[5], pw = ip[6];                     \
    const int64_t ob = (int64_t)Wo * Wo, ib = (int64_t)W * W;                                             \
    const int fast = sw == 1 && Wo == W; /* stride 1, same size: taps are flat shifts of one block */     \
    for (int arr = 0; arr < (ot ? 2 : 1); arr++) {                                                        \
        const T *in = arr ? in_t : in_n;                                                                  \
        T *o = arr ? ot : on;                                                                             \
        T *acc = save + ib; /* save: W x |shift| entries; acc: the sum of the source blocks over th */     \
        for (int64_t e = 0; e < ob; e++) o[e] = 0;                                                        \
        if (fast) {                                                                                       \
            for (int64_t e = 0; e < ib; e++) acc[e] = 0;                                                  \
            for (int th = 0; th < kh; th++) {                                                             \
                const int hi = q * sh + th - ph, hi2 = q2 * sh + th - ph;                                 \
                if (hi < 0 || hi >= H || hi2 < 0 || hi2 >= H) continue;                                   \
                const T *src = in + ((int64_t)hi * H + hi2) * ib;                                         \
                _Pragma("omp simd")                                                                       \
                for (int64_t e = 0; e < ib; e++) acc[e] += src[e];                                        \
            }                                                                                             \
            for (int tw = 0; tw < kw; tw++) {                                                             \
                const int sft = tw - pw; /* out[r][r2] += acc[r + sft][r2 + sft] where both in range */   \
                const int r_lo = sft < 0 ? -sft : 0, r_hi = sft > 0 ? W - sft : W;                        \
                if (r_hi <= r_lo) continue;                                                               \
                const int c_lo = sft < 0 ? 0 : W - sft, c_hi = sft < 0 ? -sft : W; /* columns to keep */  \
                for (int r = r_lo; r < r_hi; r++)                                                         \
                    for (int c = c_lo; c < c_hi; c++) save[(r - r_lo) * (c_hi - c_lo) + c - c_lo] = 0;    \
                if (sft != 0)                                                                             \
                    for (int r = r_lo; r < r_hi; r++)                                                     \
                        for (int c = c_lo; c < c_hi; c++)                                                 \
                            save[(r - r_lo) * (c_hi - c_lo) + c - c_lo] = o[(int64_t)r * W + c];           \
                const int64_t e0 = (int64_t)r_lo * W, e1 = (int64_t)r_hi * W, shift = (int64_t)sft * (W + 1); \
                const T *a = acc + shift;                                                                 \
                _Pragma("omp simd")                                                                       \
                for (int64_t e = e0; e < e1; e++) o[e] += a[e];                                           \
                if (sft != 0) /* columns whose source left the row: back to their value before the tap */ \
                    for (int r = r_lo; r < r_hi; r++)                                                     \
                        for (int c = c_lo; c < c_hi; c++)                                                 \
                            o[(int64_t)r * W + c] = save[(r - r_lo) * (c_hi - c_lo) + c - c_lo];           \
            }                                                                                             \
            continue;                                                                                     \
        }                                                                                                 \
        for (int th = 0; th < kh; th++) {                                                                 \
            const int hi = q * sh + th - ph, hi2 = q2 * sh + th - ph;                                     \
            if (hi < 0 || hi >= H || hi2 < 0 || hi2 >= H) continue;                                       \
            const T *src = in + ((int64_t)hi * H + hi2) * ib;                                             \
            for (int tw = 0; tw < kw; tw++) {                                                             \
                int r0 = 0, r1 = Wo;                                                                      \
                while (r0 < Wo && r0 * sw + tw - pw < 0) r0++;                                            \
                while (r1 > r0 && (r1 - 1) * sw + tw - pw >= W) r1--;                                     \
                for (int r = r0; r < r1; r++) {                                                           \
                    const int64_t at = (int64_t)(r * sw + tw - pw) * W + tw - pw;                         \
                    T *d = o + (int64_t)r * Wo;                                                           \
                    for (int r2 = r0; r2 < r1; r2++) d[r2] += src[at + (int64_t)r2 * sw];                 \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    _Pragma("omp simd")                                                                                   \
    for (int64_t e = 0; e < ob; e++) on[e] = on[e] * scale + b2;                                          \
    if (ot) {                                                                                             \
        _Pragma("omp simd")                                                                               \
        for (int64_t e = 0; e < ob; e++) ot[e] = ot[e] * scale + on[e];                                   \
    }                                                                                                     \
}                                                                                                         \
                                                                                                          \
/* Full layout: a convolution block by block into (on, ot), each block followed by the activation ad   \
   (NULL: none) with variances va (rows of x) and vb (rows of x'); a self pair (self_row != NULL) first \
   computes the diagonal blocks, stores their same-pixel entries (its variances) in self_row, then the \
   rest. */                                                                                               \
static void conv_full_##SFX(const T *in_n, const T *in_t, T *on, T *ot, int H, int W, const int *ip,   \
                            const double *d, const double *ad, const T *va, const T *vb, T *self_row,     \
                            T *save) {                                                                    \
    const int Ho = ip[7], Wo = ip[8];                                                                     \
    const int64_t ob = (int64_t)Wo * Wo;                                                                  \
    const T scale = (T)(d[0] / (double)(ip[1] * ip[2])), b2 = (T)d[1];                                    \
    if (self_row) {                                                                                       \
        for (int q = 0; q < Ho; q++) {                                                                    \
            const int64_t off = ((int64_t)q * Ho + q) * ob;                                               \
            conv_block_##SFX(in_n, in_t, on + off, ot ? ot + off : 0, H, W, Wo, q, q, ip, scale, b2, save);    \
            for (int r = 0; r < Wo; r++) self_row[q * Wo + r] = on[off + (int64_t)r * Wo + r];            \
        }                                                                                                 \
        va = self_row; vb = self_row;                                                                     \
    }                                                                                                     \
    for (int q = 0; q < Ho; q++)                                                                          \
        for (int q2 = 0; q2 < Ho; q2++) {                                                                 \
            const int64_t off = ((int64_t)q * Ho + q2) * ob;                                              \
            if (!self_row || q != q2)                                                                     \
                conv_block_##SFX(in_n, in_t, on + off, ot ? ot + off : 0, H, W, Wo, q, q2, ip, scale, b2, save); \
            if (ad)                                                                                       \
                for (int r = 0; r < Wo; r++)                                                              \
                    act_block_##SFX(on + off + (int64_t)r * Wo, ot ? ot + off + (int64_t)r * Wo : 0,      \
                                    va + q * Wo + r, 0, vb + q2 * Wo, Wo, ad);                            \
        }                                                                                                 \
}                                                                                                         \
                                                                                                          \
/* Pairs [0, n_pairs): images ia[p], ib[p] of `images` (n_img x C x H x W). self[p]: the pair is an image \
   with itself: its variances are stored in vars[ia[p]] (row of var_len), else read from vars[ia], vars[ib]. \
   Outputs out_n[p], out_t[p] (double; out_t may be NULL: NNGP only). Returns 0, -1 if out of memory, -2 for branches nested deeper than MAX_SLOTS. */ \
int ntk_spatial_pairs_##SFX(const T *images, int C, int H0, int W0, int full0, int64_t n_pairs,          \
                            const int64_t *ia, const int64_t *ib, const uint8_t *self, const int *ops,   \
                            const double *dps, int n_ops, int64_t max_size, T *vars, int64_t var_len,     \
                            double *out_n, double *out_t) {                                               \
    int slots = 0, Hm = H0, Wm = W0, km = 1; /* branch slots; the largest image (UPS grows it) and filter */ \
    for (int o = 0; o < n_ops; o++) {                                                                     \
        const int *q = ops + o * NI;                                                                      \
        if (q[0] == OP_FORK && q[1] + 1 > slots) slots = q[1] + 1;                                        \
        const int oh = q[0] == OP_CONV ? q[7] : (q[0] == OP_POOL || q[0] == OP_UPS) ? q[5] : 0;            \
        const int ow = q[0] == OP_CONV ? q[8] : (q[0] == OP_POOL || q[0] == OP_UPS) ? q[6] : 0;            \
        if (oh > Hm) Hm = oh;                                                                             \
        if (ow > Wm) Wm = ow;                                                                             \
        if (q[0] == OP_CONV && q[2] > km) km = q[2];                                                      \
    }                                                                                                     \
    if (slots > MAX_SLOTS) return -2;                                                                     \
    /* + km: conv_block's shifted sum reads (and discards) up to a filter width past its block */        \
    const int64_t scratch = 2 * (int64_t)Hm * Wm + 2 * (int64_t)Wm * Wm + km;                             \
    T *buf = (T *)malloc((size_t)((6 + 4 * slots) * max_size + scratch) * sizeof(T));                     \
    if (!buf) return -1;                                                                                  \
    T *fk_n[MAX_SLOTS], *fk_t[MAX_SLOTS], *ac_n[MAX_SLOTS], *ac_t[MAX_SLOTS];                             \
    int fk_h[MAX_SLOTS], fk_w[MAX_SLOTS], fk_full[MAX_SLOTS], fk_first[MAX_SLOTS];                        \
    {                                                                                                     \
        T *slot_base = buf + 6 * max_size + scratch;                                                      \
        for (int k = 0; k < slots; k++) {                                                                 \
            fk_n[k] = slot_base + (4 * k) * max_size; fk_t[k] = slot_base + (4 * k + 1) * max_size;       \
            ac_n[k] = slot_base + (4 * k + 2) * max_size; ac_t[k] = slot_base + (4 * k + 3) * max_size;   \
        }                                                                                                 \
    }                                                                                                     \
    T *n = buf, *t = buf + max_size, *tn = buf + 2 * max_size, *tt = buf + 3 * max_size;                  \
    T *un = buf + 4 * max_size, *ut = buf + 5 * max_size;                                                 \
    T *dg = buf + 6 * max_size;                                                                           \
    T *sv = dg + 2 * (int64_t)Hm * Wm; /* conv_block scratch: saved columns and one block */              \
    const int64_t img = (int64_t)C * H0 * W0;                                                             \
    const int with_ntk = out_t != 0;                                                                      \
    for (int64_t p = 0; p < n_pairs; p++) {                                                               \
        int H = H0, W = W0, full = full0;                                                                 \
        input_##SFX(images + ia[p] * img, images + ib[p] * img, C, H, W, full, n, with_ntk ? t : 0);     \
        double rn = 0, rt = 0;                                                                            \
        for (int o = 0; o < n_ops; o++) {                                                                 \
            const int *ip = ops + o * NI;                                                                 \
            const double *d = dps + o * ND;                                                               \
            if (ip[0] == OP_CONV && full) {                                                               \
                const int *nx = o + 1 < n_ops ? ops + (o + 1) * NI : 0;                                   \
                const int fuse = nx && nx[0] == OP_ACT;                                                   \
                const double *ad = fuse ? dps + (o + 1) * ND : 0;                                         \
                const T *va = 0, *vb = 0;                                                                 \
                T *self_row = 0;                                                                          \
                if (fuse) {                                                                               \
                    if (self[p]) self_row = vars + ia[p] * var_len + nx[1];                               \
                    else { va = vars + ia[p] * var_len + nx[1]; vb = vars + ib[p] * var_len + nx[1]; }    \
                }                                                                                         \
                conv_full_##SFX(n, with_ntk ? t : 0, un, with_ntk ? ut : 0, H, W, ip, d, ad, va, vb, self_row, sv); \
                T *sw_n = n; n = un; un = sw_n;                                                           \
                T *sw_t = t; t = ut; ut = sw_t;                                                           \
                H = ip[7]; W = ip[8];                                                                     \
                if (fuse) o++;                                                                            \
            } else if (ip[0] == OP_CONV) {                                                                \
                const int kh = ip[1], kw = ip[2], sh = ip[3], sw = ip[4], ph = ip[5], pw = ip[6];         \
                const int Ho = ip[7], Wo = ip[8];                                                         \
                const int64_t block = Wo;                                                                 \
                const int64_t size = (int64_t)Ho * block;                                                 \
                const T scale = (T)(d[0] / (double)(kh * kw)), b2 = (T)d[1];                              \
                stencil_w_##SFX(n, tn, H, W, Wo, kw, sw, pw, 0);                                          \
                stencil_h_##SFX(tn, un, H, Ho, block, kh, sh, ph, 0);                                     \
                _Pragma("omp simd")                                                                       \
                for (int64_t e = 0; e < size; e++) un[e] = un[e] * scale + b2;                            \
                if (with_ntk) {                                                                           \
                    stencil_w_##SFX(t, tt, H, W, Wo, kw, sw, pw, 0);                                      \
                    stencil_h_##SFX(tt, ut, H, Ho, block, kh, sh, ph, 0);                                 \
                    _Pragma("omp simd")                                                                   \
                    for (int64_t e = 0; e < size; e++) ut[e] = ut[e] * scale + un[e];                     \
                }                                                                                         \
                T *sw_n = n; n = un; un = sw_n;                                                           \
                T *sw_t = t; t = ut; ut = sw_t;                                                           \
                H = Ho; W = Wo;                                                                           \
            } else if (ip[0] == OP_ACT) {                                                                 \
                const int64_t P = (int64_t)H * W;                                                         \
                const T *va, *vb;                                                                         \
                if (self[p]) {                                                                            \
                    T *row = vars + ia[p] * var_len + ip[1];                                              \
                    if (full) diagonal_##SFX(n, row, H, W); else memcpy(row, n, P * sizeof(T));           \
                    memcpy(dg, row, P * sizeof(T));                                                       \
                    va = dg; vb = dg;                                                                     \
                } else {                                                                                  \
                    va = vars + ia[p] * var_len + ip[1];                                                  \
                    vb = vars + ib[p] * var_len + ip[1];                                                  \
                }                                                                                         \
                act_##SFX(n, with_ntk ? t : 0, va, vb, H, W, full, d);                                    \
            } else if (ip[0] == OP_POOL) {                                                                \
                pool_##SFX(n, tn, un, H, W, ip);                                                          \
                { T *s_ = n; n = un; un = s_; }                                                           \
                if (with_ntk) {                                                                           \
                    pool_##SFX(t, tt, ut, H, W, ip);                                                      \
                    T *s_ = t; t = ut; ut = s_;                                                           \
                }                                                                                         \
                H = ip[5]; W = ip[6];                                                                     \
            } else if (ip[0] == OP_DIAG) {                                                                \
                diagonal_##SFX(n, un, H, W);                                                              \
                { T *s_ = n; n = un; un = s_; }                                                           \
                if (with_ntk) {                                                                           \
                    diagonal_##SFX(t, ut, H, W);                                                          \
                    T *s_ = t; t = ut; ut = s_;                                                           \
                }                                                                                         \
                full = 0;                                                                                 \
            } else if (ip[0] == OP_UPS) {                                                                 \
                upsample_##SFX(n, un, H, W, full, ip);                                                    \
                { T *s_ = n; n = un; un = s_; }                                                           \
                if (with_ntk) {                                                                           \
                    upsample_##SFX(t, ut, H, W, full, ip);                                                \
                    T *s_ = t; t = ut; ut = s_;                                                           \
                }                                                                                         \
                H = ip[5]; W = ip[6];                                                                     \
            } else if (ip[0] == OP_FORK) {                                                                \
                const int k = ip[1];                                                                      \
                const int64_t size = full ? (int64_t)H * H * W * W : (int64_t)H * W;                      \
                memcpy(fk_n[k], n, size * sizeof(T));                                                     \
                if (with_ntk) memcpy(fk_t[k], t, size * sizeof(T));                                       \
                fk_h[k] = H; fk_w[k] = W; fk_full[k] = full; fk_first[k] = 1;                             \
            } else if (ip[0] == OP_JOIN) {                                                                \
                const int k = ip[1];                                                                      \
                const int64_t size = full ? (int64_t)H * H * W * W : (int64_t)H * W;                      \
                const T wgt = (T)d[0];                                                                    \
                T *an = ac_n[k], *at = ac_t[k];                                                           \
                if (fk_first[k]) {                                                                        \
                    for (int64_t e = 0; e < size; e++) an[e] = n[e] * wgt;                                \
                    if (with_ntk) for (int64_t e = 0; e < size; e++) at[e] = t[e] * wgt;                  \
                    fk_first[k] = 0;                                                                      \
                } else {                                                                                  \
                    for (int64_t e = 0; e < size; e++) an[e] += n[e] * wgt;                               \
                    if (with_ntk) for (int64_t e = 0; e < size; e++) at[e] += t[e] * wgt;                 \
                }                                                                                         \
                if (ip[2]) { /* the merge is current: swap buffers with the accumulator */                \
                    ac_n[k] = n; n = an;                                                                  \
                    ac_t[k] = t; t = at;                                                                  \
                } else { /* the next branch starts from the saved input */                               \
                    H = fk_h[k]; W = fk_w[k]; full = fk_full[k];                                          \
                    const int64_t in_size = full ? (int64_t)H * H * W * W : (int64_t)H * W;               \
                    memcpy(n, fk_n[k], in_size * sizeof(T));                                              \
                    if (with_ntk) memcpy(t, fk_t[k], in_size * sizeof(T));                                \
                }                                                                                         \
            } else if (ip[0] == OP_GAP || ip[0] == OP_FLAT) {                                             \
                const int64_t P = (int64_t)H * W;                                                         \
                if (ip[0] == OP_GAP && full) {                                                            \
                    for (int64_t e = 0; e < P * P; e++) { rn += n[e]; if (with_ntk) rt += t[e]; }         \
                    rn /= (double)(P * P); rt /= (double)(P * P);                                         \
                } else {                                                                                  \
                    for (int h = 0; h < H; h++)                                                           \
                        for (int w = 0; w < W; w++) {                                                     \
                            const int64_t e = full ? (((int64_t)h * H + h) * W + w) * W + w : h * W + w;  \
                            rn += n[e];                                                                   \
                            if (with_ntk) rt += t[e];                                                     \
                        }                                                                                 \
                    rn /= (double)P; rt /= (double)P;                                                     \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
        out_n[p] = rn;                                                                                    \
        if (with_ntk) out_t[p] = rt;                                                                      \
    }                                                                                                     \
    free(buf);                                                                                            \
    return 0;                                                                                             \
}

DEFINE(float, f32, atan2f, sqrtf)
DEFINE(double, f64, atan2, sqrt)
