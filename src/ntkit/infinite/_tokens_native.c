/* Native token-pair program of ntkit.infinite.tokens_fast (compiled on first use by ntkit.infinite.native).
 *
 * For one pair of token inputs (x, x') (channels C, tokens L, channel-first) the covariance of one channel
 * K[p][p'] over tokens p of x and p' of x', and the NTK T, go through a program of layers, all in an
 * L x L workspace (Jacot et al. 2018; Hron et al. 2020; Novak et al. 2020):
 *
 *   input  K = A_x B_x' / div, T = A'_x B'_x' (GEMMs): A_x (L x r) and B_x (r x L) the input x^T and x
 *          (div = C, T = 0), or the factors Phi, Phi^T, Psi, Psi^T of the linear prefix (ntkit.infinite.tokens_factors,
 *          div = 1); stored padded to Lr rows / Lp columns with zeros
 *   DENSE  a per-token Linear (NTK parameterization): K' = w2 K + b2, T' = w2 T + K'
 *   LN     layer norm over each token's channels: K' = K f[p] f'[p'], T' = T f[p] f'[p'],
 *          f = 1 / sqrt(K(x, x)[p][p] + eps) (0 where that is <= 0)
 *   ACT    ABReLU dual maps, v1 = K(x, x)[p][p], v2 = K(x', x')[p'][p'], c = K[p][p']:
 *          sqrt(det) = sqrt(max(v1 v2 - c^2, 0)), pi - theta = atan2(sqrt(det), -c)
 *          (atan2p of _atan2p.h: within 1.5 eps, vectorised, where glibc's vector atan2f took ~17% of the loop)
 *          K' = (sqrt(det) + (pi - theta) c) k1 + c k2,   T' = T (ka (pi - theta) p1 p2 + kb (p1 + p2) + kc)
 *          (the constants of ntkit.activations.arccos.abrelu_constants(a, b), as in _cntk_native.c)
 *   ATTN   self-attention with linear scaling: G = m(qk (iw K(x, x) + pw I)) (softmax over the keys, relu, abs
 *          or the identity), K' = ov2 G K G'^T + b2, T' = ov2 G (T + 2 K) G'^T + b2
 *   FORK / JOIN  branches from the same state merged by a weighted sum (as _cntk_native.c)
 *   MEAN   the read-out: scale * mean of all token pairs of K and T (in double)
 *
 * The per-input quantities (f, v1, G and G^T) are those of the input with itself: the self pair (x, x)
 * computes them from its own state and stores them (store), every other pair reads them, so self pairs run
 * first. Workspace layout: S holds row p of K then row p of T, each padded to Lp (a multiple of the vector
 * width) columns; Lr (a multiple of 4) rows. The padding stays finite and is never read back as a real entry
 * (the row ops run on whole padded vectors). The self pair runs each run of row ops op by op (the x' side of
 * its LN / ACT needs every row's diagonal first); other pairs, where a row is one vector, run it row by row
 * with the state in registers (run_rows: the same operations per entry, bitwise the same results).
 * The attention is two GEMMs per pair on NNGP and NTK together: C1 = G [K | T + 2K] ((Lr x L) (L x 2 Lp)),
 * then C1 seen as 2 Lr rows of Lp times G'^T gives the rows of K' and T' interleaved, which is S's layout.
 * The GEMMs contract multiplies and adds (FMA); every other step is compiled with -ffp-contract=off, so the
 * self pair's angle is exactly 0.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_atan2p.h"

enum { OP_DENSE = 1, OP_LN = 2, OP_ACT = 3, OP_ATTN = 4, OP_FORK = 5, OP_JOIN = 6, OP_MEAN = 7 };
enum { NI = 8, ND = 8, MR = 4, MAX_SLOTS = 8 };

#if defined(__clang__)
#define FASTFP
#define CONTRACT _Pragma("clang fp contract(fast)")
#else
#define FASTFP __attribute__((optimize("fp-contract=fast")))
#define CONTRACT
#endif

#define DEFINE(T, SFX, ATAN2, SQRT, EXP)                                                                      \
typedef T vec_##SFX __attribute__((vector_size(64)));                                                     \
enum { W_##SFX = 64 / (int)sizeof(T) };                                                                    \
static inline vec_##SFX ld_##SFX(const T *p) { vec_##SFX v; memcpy(&v, p, sizeof v); return v; }         \
static inline void st_##SFX(T *p, vec_##SFX v) { memcpy(p, &v, sizeof v); }                             \
/* C[MR x NV W] = A[MR x k] B[k x NV W] (row-major, leading dimensions lda, ldb, ldc). */                 \
FASTFP static inline void kern_##SFX(const T *A, int lda, const T *B, int ldb, T *C, int ldc, int k,      \
                                     int nv) {                                                            \
    CONTRACT                                                                                              \
    const vec_##SFX z = {0};                                                                              \
    if (nv >= 4) {                                                                                        \
        vec_##SFX c[MR][4];                                                                               \
        for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = c[r][2] = c[r][3] = z;                           \
        for (int q = 0; q < k; q++) {                                                                     \
            const T *b = B + (int64_t)q * ldb;                                                            \
            vec_##SFX b0 = ld_##SFX(b), b1 = ld_##SFX(b + W_##SFX), b2 = ld_##SFX(b + 2 * W_##SFX),       \
                      b3 = ld_##SFX(b + 3 * W_##SFX);                                                     \
            for (int r = 0; r < MR; r++) {                                                                \
                T a = A[(int64_t)r * lda + q];                                                            \
                c[r][0] += a * b0; c[r][1] += a * b1; c[r][2] += a * b2; c[r][3] += a * b3;               \
            }                                                                                             \
        }                                                                                                 \
        for (int r = 0; r < MR; r++)                                                                      \
            for (int v = 0; v < 4; v++) st_##SFX(C + (int64_t)r * ldc + v * W_##SFX, c[r][v]);           \
    } else if (nv >= 2) {                                                                                 \
        vec_##SFX c[MR][2];                                                                               \
        for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = z;                                               \
        for (int q = 0; q < k; q++) {                                                                     \
            const T *b = B + (int64_t)q * ldb;                                                            \
            vec_##SFX b0 = ld_##SFX(b), b1 = ld_##SFX(b + W_##SFX);                                       \
            for (int r = 0; r < MR; r++) {                                                                \
                T a = A[(int64_t)r * lda + q];                                                            \
                c[r][0] += a * b0; c[r][1] += a * b1;                                                     \
            }                                                                                             \
        }                                                                                                 \
        for (int r = 0; r < MR; r++)                                                                      \
            for (int v = 0; v < 2; v++) st_##SFX(C + (int64_t)r * ldc + v * W_##SFX, c[r][v]);           \
    } else {                                                                                              \
        vec_##SFX c[MR];                                                                                  \
        for (int r = 0; r < MR; r++) c[r] = z;                                                            \
        for (int q = 0; q < k; q++) {                                                                     \
            vec_##SFX b0 = ld_##SFX(B + (int64_t)q * ldb);                                                \
            for (int r = 0; r < MR; r++) c[r] += A[(int64_t)r * lda + q] * b0;                            \
        }                                                                                                 \
        for (int r = 0; r < MR; r++) st_##SFX(C + (int64_t)r * ldc, c[r]);                                \
    }                                                                                                     \
}                                                                                                         \
/* C[m x n] = A[m x k] B[k x n]: m a multiple of MR, n = nvec W. */                                       \
static void gemm_##SFX(const T *A, int lda, const T *B, int ldb, T *C, int ldc, int m, int nvec, int k) { \
    for (int j = 0; j < nvec;) {                                                                          \
        const int nv = nvec - j >= 4 ? 4 : (nvec - j >= 2 ? 2 : 1);                                       \
        for (int i = 0; i < m; i += MR)                                                                   \
            kern_##SFX(A + (int64_t)i * lda, lda, B + j * W_##SFX, ldb, C + (int64_t)i * ldc + j * W_##SFX,\
                       ldc, k, nv);                                                                       \
        j += nv;                                                                                          \
    }                                                                                                     \
}                                                                                                         \
static inline void act_row_##SFX(T *restrict c, T *restrict th, T a1, const T *restrict v2, int m,       \
                                 const double *d) {                                                       \
    const T k1 = (T)d[0], k2 = (T)d[1], ka = (T)d[2], kb = (T)d[3], kc = (T)d[4];                          \
    const T p1 = a1 > (T)0 ? (T)1 : (T)0;                                                                 \
    if (th) {                                                                                             \
        _Pragma("omp simd")                                                                               \
        for (int q = 0; q < m; q++) {                                                                     \
            T a2 = v2[q], cc = c[q];                                                                      \
            T det = a1 * a2 - cc * cc;                                                                    \
            det = det > (T)0 ? det : (T)0;                                                                \
            T sq = SQRT(det);                                                                             \
            T pmt = ATAN2(sq, -cc);                                                                       \
            T p2 = a2 > (T)0 ? (T)1 : (T)0;                                                               \
            th[q] = th[q] * (pmt * ka * (p1 * p2) + (p1 + p2) * kb + kc);                                 \
            c[q] = (sq + pmt * cc) * k1 + cc * k2;                                                        \
        }                                                                                                 \
    } else {                                                                                              \
        _Pragma("omp simd")                                                                               \
        for (int q = 0; q < m; q++) {                                                                     \
            T a2 = v2[q], cc = c[q];                                                                      \
            T det = a1 * a2 - cc * cc;                                                                    \
            det = det > (T)0 ? det : (T)0;                                                                \
            T sq = SQRT(det);                                                                             \
            T pmt = ATAN2(sq, -cc);                                                                       \
            c[q] = (sq + pmt * cc) * k1 + cc * k2;                                                        \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
/* G (Lr x Lp, rows and columns past L zero) and G^T (L x Lp) of one input's own covariance S. */          \
static void attention_weights_##SFX(const T *S, int L, int Lp, int Lr, int mech, const double *d, T *g,   \
                                    T *gt) {                                                              \
    const int ld = 2 * Lp;                                                                                \
    const T qk = (T)d[0], iw = (T)d[3], pw = (T)d[4];                                                     \
    memset(g, 0, sizeof(T) * (size_t)Lr * Lp);                                                            \
    memset(gt, 0, sizeof(T) * (size_t)L * Lp);                                                            \
    for (int p = 0; p < L; p++) {                                                                         \
        T *row = g + (int64_t)p * Lp;                                                                     \
        for (int q = 0; q < L; q++) {                                                                     \
            T k = S[(int64_t)p * ld + q];                                                                 \
            if (pw != (T)0) k = iw * k + (p == q ? pw : (T)0);                                            \
            row[q] = k * qk;                                                                              \
        }                                                                                                 \
        if (mech == 0) {                                                                                  \
            T mx = row[0];                                                                                \
            for (int q = 1; q < L; q++) mx = row[q] > mx ? row[q] : mx;                                   \
            T sum = 0;                                                                                    \
            for (int q = 0; q < L; q++) { row[q] = EXP(row[q] - mx); sum += row[q]; }                      \
            for (int q = 0; q < L; q++) row[q] = row[q] / sum;                                            \
        } else if (mech == 1) {                                                                           \
            for (int q = 0; q < L; q++) row[q] = row[q] > (T)0 ? row[q] : (T)0;                           \
        } else if (mech == 2) {                                                                           \
            for (int q = 0; q < L; q++) row[q] = row[q] < (T)0 ? -row[q] : row[q];                        \
        }                                                                                                 \
        for (int q = 0; q < L; q++) gt[(int64_t)q * Lp + p] = row[q];                                     \
    }                                                                                                     \
}                                                                                                         \
/* One row-local op (DENSE, LN, ACT, FORK, JOIN) on row p of the state S: every entry of row p of its output \
   depends on row p of its inputs and on per-input vectors only. fa, fb: the op's stored quantities of the two \
   inputs (LN factors, ACT variances). */                                                                 \
static inline void row_op_##SFX(const int *ip, const double *d, T *S, int p, int ld, int Lp, int L, int ntk, \
                                const T *fa, const T *fb, T *const *saved, T *const *acc) {               \
    const int64_t off = (int64_t)p * ld;                                                                  \
    T *k = S + off, *t = k + Lp;                                                                          \
    if (ip[0] == OP_DENSE) {                                                                              \
        const T w2 = (T)d[0], b2 = (T)d[1];                                                               \
        if (w2 != (T)1) {                                                                                 \
            for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */        \
                _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) k[q] = k[q] * w2;             \
        }                                                                                                 \
        if (b2 != (T)0) {                                                                                 \
            for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */        \
                _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) k[q] = k[q] + b2;             \
        }                                                                                                 \
        if (ntk && w2 != (T)1) {                                                                          \
            for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */        \
                _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) t[q] = t[q] * w2 + k[q];      \
        } else if (ntk) {                                                                                 \
            for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */        \
                _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) t[q] = t[q] + k[q];           \
        }                                                                                                 \
    } else if (ip[0] == OP_LN) {                                                                          \
        const T f = fa[p];                                                                                \
        for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */            \
            _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) k[q] = k[q] * f * fb[q];          \
        if (ntk) {                                                                                        \
            for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */        \
                _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) t[q] = t[q] * f * fb[q];      \
        }                                                                                                 \
    } else if (ip[0] == OP_ACT) {                                                                         \
        act_row_##SFX(k, ntk ? t : 0, fa[p], fb, Lp, d);                                                   \
    } else if (ip[0] == OP_FORK) {                                                                        \
        memcpy(saved[ip[1]] + off, k, sizeof(T) * (size_t)(ntk ? 2 * Lp : L));                            \
    } else { /* OP_JOIN: dst = src + w S, src the accumulator, the saved input (a first identity branch) or \
                nothing (the first branch), dst the accumulator or S (the last branch) */                 \
        const int s = ip[1], last = ip[2], first = ip[3], base = ip[4];                                   \
        const T w = (T)d[0];                                                                              \
        const T *src = first ? (base ? saved[s] : 0) : acc[s];                                            \
        T *dst = last ? S : acc[s];                                                                       \
        for (int h = 0; h < (ntk ? 2 : 1); h++) {                                                         \
            const int64_t o2 = off + h * Lp;                                                              \
            T *dk = dst + o2;                                                                             \
            const T *sk = S + o2;                                                                         \
            if (!src && w == (T)1) {                                                                      \
                if (dk != sk) memcpy(dk, sk, sizeof(T) * (size_t)L);                                      \
            } else if (!src) {                                                                            \
                for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */    \
                    _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) dk[q] = sk[q] * w;        \
            } else if (w == (T)1) {                                                                       \
                const T *ak = src + o2;                                                                   \
                for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */    \
                    _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) dk[q] = ak[q] + sk[q];    \
            } else {                                                                                      \
                const T *ak = src + o2;                                                                   \
                for (int q0 = 0; q0 < Lp; q0 += W_##SFX) /* whole vectors: the padding stays finite */    \
                    _Pragma("omp simd") for (int q = q0; q < q0 + W_##SFX; q++) dk[q] = ak[q] + sk[q] * w;\
            }                                                                                             \
        }                                                                                                 \
        if (!last) memcpy(k, saved[s] + off, sizeof(T) * (size_t)(ntk ? 2 * Lp : L));                     \
    }                                                                                                     \
}                                                                                                         \
/* A run of row-local ops on a pair that is not a self pair (its per-input quantities are stored), row by row and\
   vector by vector with the state in registers: the same operations on every entry as row_op in the same order\
   (bitwise the same results), without a load, a store and a dispatch per op and row. A self pair cannot run\
   this way: its LN / ACT quantities of x' are the diagonals of all rows before the op. */                \
static void run_rows_##SFX(const int *ops, const double *dps, int n, T *S, int L, int Lp, int ld, int ntk,\
                           const T *sa, const T *sb, T *const *saved, T *const *acc) {                    \
    const vec_##SFX z = {0};                                                                              \
    for (int p = 0; p < L; p++) {                                                                         \
        const int64_t off = (int64_t)p * ld;                                                              \
        for (int q0 = 0; q0 < Lp; q0 += W_##SFX) {                                                        \
            vec_##SFX k = ld_##SFX(S + off + q0), t = ntk ? ld_##SFX(S + off + Lp + q0) : z;              \
            for (int r = 0; r < n; r++) {                                                                 \
                const int *ip = ops + r * NI;                                                             \
                const double *d = dps + r * ND;                                                           \
                if (ip[0] == OP_DENSE) {                                                                  \
                    const T w2 = (T)d[0], b2 = (T)d[1];                                                   \
                    if (w2 != (T)1) k = k * w2;                                                           \
                    if (b2 != (T)0) k = k + b2;                                                           \
                    if (ntk) t = w2 != (T)1 ? t * w2 + k : t + k;                                         \
                } else if (ip[0] == OP_LN) {                                                              \
                    const T f = sa[ip[1] + p];                                                            \
                    const vec_##SFX fb = ld_##SFX(sb + ip[1] + q0);                                       \
                    k = k * f * fb;                                                                       \
                    if (ntk) t = t * f * fb;                                                              \
                } else if (ip[0] == OP_ACT) {                                                             \
                    T kk[W_##SFX] __attribute__((aligned(64))), tt[W_##SFX] __attribute__((aligned(64))); \
                    st_##SFX(kk, k);                                                                      \
                    st_##SFX(tt, t);                                                                      \
                    act_row_##SFX(kk, ntk ? tt : 0, sa[ip[1] + p], sb + ip[1] + q0, W_##SFX, d);          \
                    k = ld_##SFX(kk);                                                                     \
                    t = ld_##SFX(tt);                                                                     \
                } else if (ip[0] == OP_FORK) {                                                            \
                    st_##SFX(saved[ip[1]] + off + q0, k);                                                 \
                    if (ntk) st_##SFX(saved[ip[1]] + off + Lp + q0, t);                                   \
                } else { /* OP_JOIN, as row_op */                                                         \
                    const int s = ip[1], last = ip[2], first = ip[3], base = ip[4];                       \
                    const T w = (T)d[0];                                                                  \
                    const T *src = first ? (base ? saved[s] : 0) : acc[s];                                \
                    for (int h = 0; h < (ntk ? 2 : 1); h++) {                                             \
                        const int64_t o2 = off + h * Lp + q0;                                             \
                        const vec_##SFX v = h ? t : k;                                                    \
                        vec_##SFX out;                                                                    \
                        if (!src && w == (T)1) out = v;                                                   \
                        else if (!src) out = v * w;                                                       \
                        else if (w == (T)1) out = ld_##SFX(src + o2) + v;                                 \
                        else out = ld_##SFX(src + o2) + v * w;                                            \
                        if (last) {                                                                       \
                            if (h) t = out; else k = out;                                                 \
                        } else {                                                                          \
                            st_##SFX(acc[s] + o2, out);                                                   \
                        }                                                                                 \
                    }                                                                                     \
                    if (!last) {                                                                          \
                        k = ld_##SFX(saved[s] + off + q0);                                                \
                        if (ntk) t = ld_##SFX(saved[s] + off + Lp + q0);                                  \
                    }                                                                                     \
                }                                                                                         \
            }                                                                                             \
            st_##SFX(S + off + q0, k);                                                                    \
            if (ntk) st_##SFX(S + off + Lp + q0, t);                                                      \
        }                                                                                                 \
    }                                                                                                     \
}                                                                                                         \
int ntk_tokens_pairs_##SFX(const T *ka, const T *kb, int rk, const T *ta, const T *tb, int rt, double div,\
                           int L, int64_t n,                                                              \
                           const int64_t *ia, const int64_t *ib,                                          \
                           const uint8_t *selfs, const int *ops, const double *dps, int n_ops, T *store,  \
                           int64_t store_len, double *out_n, double *out_t) {                             \
    const int W = W_##SFX, Lp = (L + W - 1) / W * W, Lr = (L + MR - 1) / MR * MR, ld = 2 * Lp;             \
    const int ntk = out_t != 0;                                                                           \
    const size_t block = (size_t)Lr * ld;                                                                 \
    int slots = 0;                                                                                        \
    for (int o = 0; o < n_ops; o++)                                                                       \
        if (ops[o * NI] == OP_FORK && ops[o * NI + 1] + 1 > slots) slots = ops[o * NI + 1] + 1;           \
    if (slots > MAX_SLOTS) return 2;                                                                      \
    T *work = (T *)aligned_alloc(64, sizeof(T) * block * (2 + 2 * (size_t)slots));                        \
    if (!work) return 1;                                                                                  \
    T *const S = work, *const C1 = work + block;                                                          \
    T *saved[MAX_SLOTS], *acc[MAX_SLOTS];                                                                 \
    for (int s = 0; s < slots; s++) { saved[s] = work + (2 + 2 * s) * block; acc[s] = saved[s] + block; } \
    memset(work, 0, sizeof(T) * block * (2 + 2 * (size_t)slots)); /* the padding stays 0 */             \
    for (int64_t e = 0; e < n; e++) {                                                                     \
        const int self = selfs[e] != 0;                                                                   \
        T *sa = store + ia[e] * store_len, *sb = store + ib[e] * store_len;                               \
        gemm_##SFX(ka + ia[e] * (int64_t)Lr * rk, rk, kb + ib[e] * (int64_t)rk * Lp, Lp, S, ld, Lr, Lp / W,   \
                   rk);                                                                                   \
        if (div != 1.0)                                                                                   \
            for (int p = 0; p < L; p++) {                                                                 \
                T *row = S + (int64_t)p * ld;                                                             \
                _Pragma("omp simd")                                                                       \
                for (int q = 0; q < L; q++) row[q] = row[q] / (T)div;                                     \
            }                                                                                             \
        if (ntk)                                                                                          \
            gemm_##SFX(ta + ia[e] * (int64_t)Lr * rt, rt, tb + ib[e] * (int64_t)rt * Lp, Lp, S + Lp, ld, Lr,   \
                       Lp / W, rt);                                                                       \
        for (int o = 0; o < n_ops;) {                                                                     \
            const int *ip = ops + o * NI;                                                                 \
            const double *d = dps + o * ND;                                                               \
            if (ip[0] == OP_ATTN) {                                                                       \
                T *ga = sa + ip[1], *gtb = sb + ip[1] + (int64_t)Lr * Lp;                                 \
                if (self) attention_weights_##SFX(S, L, Lp, Lr, ip[2], d, ga, sa + ip[1] + (int64_t)Lr * Lp); \
                const T ov2 = (T)d[1], b2 = (T)d[2];                                                      \
                if (ntk)                                                                                  \
                    for (int p = 0; p < L; p++) {                                                         \
                        T *k = S + (int64_t)p * ld, *t = k + Lp;                                          \
                        _Pragma("omp simd")                                                               \
                        for (int q = 0; q < L; q++) t[q] = t[q] + k[q] * (T)2;                            \
                    }                                                                                     \
                gemm_##SFX(ga, Lp, S, ld, C1, ld, Lr, (ntk ? 2 : 1) * Lp / W, L);                         \
                if (ntk)                                                                                  \
                    gemm_##SFX(C1, Lp, gtb, Lp, S, Lp, 2 * Lr, Lp / W, L);                                \
                else                                                                                      \
                    gemm_##SFX(C1, ld, gtb, Lp, S, ld, Lr, Lp / W, L);                                    \
                if (ov2 != (T)1 || b2 != (T)0)                                                            \
                    for (int p = 0; p < L; p++) {                                                         \
                        T *k = S + (int64_t)p * ld;                                                       \
                        for (int h = 0; h < (ntk ? 2 : 1); h++, k += Lp) {                                \
                            if (ov2 != (T)1) {                                                            \
                                _Pragma("omp simd")                                                       \
                                for (int q = 0; q < L; q++) k[q] = k[q] * ov2;                            \
                            }                                                                             \
                            if (b2 != (T)0) {                                                             \
                                _Pragma("omp simd")                                                       \
                                for (int q = 0; q < L; q++) k[q] = k[q] + b2;                             \
                            }                                                                             \
                        }                                                                                 \
                    }                                                                                     \
                o++;                                                                                      \
                continue;                                                                                 \
            }                                                                                             \
            if (ip[0] == OP_MEAN) {                                                                       \
                double sn = 0.0, st = 0.0;                                                                \
                if (Lp == W_##SFX) { /* one vector per row: column sums in double across the rows, then the W\
                                        lanes in a fixed order (no horizontal reduction per row); padding is 0 */\
                    double cn[W_##SFX], ct[W_##SFX];                                                      \
                    for (int j = 0; j < W_##SFX; j++) cn[j] = ct[j] = 0.0;                                \
                    for (int p = 0; p < L; p++) {                                                         \
                        const T *k = S + (int64_t)p * ld;                                                 \
                        _Pragma("omp simd")                                                               \
                        for (int j = 0; j < W_##SFX; j++) cn[j] += j < L ? (double)k[j] : 0.0;            \
                        if (ntk) {                                                                        \
                            _Pragma("omp simd")                                                           \
                            for (int j = 0; j < W_##SFX; j++) ct[j] += j < L ? (double)k[Lp + j] : 0.0;   \
                        }                                                                                 \
                    }                                                                                     \
                    for (int j = 0; j < W_##SFX; j++) { sn += cn[j]; st += ct[j]; }                       \
                } else {                                                                                  \
                    for (int p = 0; p < L; p++) {                                                         \
                        const T *k = S + (int64_t)p * ld;                                                 \
                        _Pragma("omp simd reduction(+ : sn)")                                             \
                        for (int q = 0; q < L; q++) sn += (double)k[q];                                   \
                        if (ntk) {                                                                        \
                            _Pragma("omp simd reduction(+ : st)")                                         \
                            for (int q = 0; q < L; q++) st += (double)k[Lp + q];                          \
                        }                                                                                 \
                    }                                                                                     \
                }                                                                                         \
                const double scale = d[0] / ((double)L * (double)L);                                      \
                out_n[e] = sn * scale;                                                                    \
                if (ntk) out_t[e] = st * scale;                                                           \
                o++;                                                                                      \
                continue;                                                                                 \
            }                                                                                             \
            /* a run of row-local ops, op by op; the self pair first stores each op's per-input quantities\
               from the diagonal of its state before the op (LN factors, ACT variances) */                \
            int end = o;                                                                                  \
            while (end < n_ops && ops[end * NI] != OP_ATTN && ops[end * NI] != OP_MEAN) end++;            \
            if (!self && Lp == W_##SFX) { /* one vector per row (measured: 1.2x at L = 16, 0.95x at L = 64) */\
                run_rows_##SFX(ops + o * NI, dps + o * ND, end - o, S, L, Lp, ld, ntk, sa, sb, saved, acc); \
                o = end;                                                                                  \
                continue;                                                                                 \
            }                                                                                             \
            for (int r = o; r < end; r++) {                                                               \
                const int *rp = ops + r * NI;                                                             \
                const double *rd = dps + r * ND;                                                          \
                T *fa = sa + rp[1];                                                                       \
                if (self && rp[0] == OP_LN)                                                               \
                    for (int p = 0; p < L; p++) {                                                         \
                        const T v = S[(int64_t)p * ld + p] + (T)rd[0];                                    \
                        fa[p] = v > (T)0 ? (T)1 / SQRT(v) : (T)0;                                         \
                    }                                                                                     \
                else if (self && rp[0] == OP_ACT)                                                         \
                    for (int p = 0; p < L; p++) fa[p] = S[(int64_t)p * ld + p];                           \
                for (int p = 0; p < L; p++)                                                               \
                    row_op_##SFX(rp, rd, S, p, ld, Lp, L, ntk, fa, sb + rp[1], saved, acc);               \
            }                                                                                             \
            o = end;                                                                                      \
        }                                                                                                 \
    }                                                                                                     \
    free(work);                                                                                           \
    return 0;                                                                                             \
}

DEFINE(float, f32, atan2p_f32, sqrtf, expf)
DEFINE(double, f64, atan2p_f64, sqrt, exp)
