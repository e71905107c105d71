/* Vectorisable atan2 for y >= 0, shared by _diag_native.c and _tokens_native.c (ntkit.infinite.native inlines
 * this file where a source includes it, so that a change here rebuilds both). */
#ifndef NTKIT_ATAN2P_H
#define NTKIT_ATAN2P_H
#include <math.h>

/* atan2(y, x) for y >= 0 (y = sqrt(det) here): the angle of (x, y) in [0, pi], vectorisable (no branch, one
 * division). Reduction to |z| <= tan(pi / 8):
 *     y <= tan(pi/8) |x|:   z = y / x,                       base = 0 (x >= 0) or pi (x < 0)
 *     y >= tan(3pi/8) |x|:  z = -x / y,                      base = pi / 2
 *     otherwise:            z = +-(y - |x|) / (y + |x|),     base = pi / 4 (x >= 0) or 3 pi / 4 (x < 0, sign -)
 * then atan2 = base + atan(z), atan(z) = z + z w P(w), w = z^2, P the Chebyshev interpolant (11 terms in
 * double, 5 in float; fitted with mpmath at 50 digits) of (atan(sqrt(w)) - sqrt(w)) / w^(3/2) on
 * [0, tan(pi/8)^2]: its own error is below 5e-18 (double) / 2.5e-9 (float) relative; measured against long
 * double atan2l on 2e7 random arguments (ratios 1e-4 .. 1e4, both signs of x), the result is within 1.5 eps
 * relative in double and in float (base in two parts, hi + lo, with the rounding of hi = pi/2 - sign(x) B kept
 * in lo by Fast2Sum: without it 3 pi / 4 was off by a constant 0.5 eps in float; the mean error is now within
 * 0.05 eps on the kernel's arguments). x = +-0 and y = 0 give 0 / pi as atan2 does (sign of the zero); NaN
 * propagates. Selects on double comparisons and the bases as pi/2 - sign(x) B keep
 * GCC's vector masks simple (nested int conditions made this loop 2x slower). */
static inline double atan2p_f64(double y, double x) {
    const double ax = fabs(x);
    double num = y >= 2.414213562373095 * ax ? -x : copysign(1.0, x) * (y - ax);
    double den = y >= 2.414213562373095 * ax ? y : y + ax;
    double bh = y >= 2.414213562373095 * ax ? 0.0 : 0.7853981633974483;
    double bl = y >= 2.414213562373095 * ax ? 0.0 : 3.061616997868383e-17;
    num = y <= 0.41421356237309503 * ax ? y : num;
    den = y <= 0.41421356237309503 * ax ? x : den;
    bh = y <= 0.41421356237309503 * ax ? 1.5707963267948966 : bh;
    bl = y <= 0.41421356237309503 * ax ? 6.123233995736766e-17 : bl;
    den = den == 0 ? 1.0 : den;
    const double sg = copysign(1.0, x), hi = 1.5707963267948966 - sg * bh;
    const double lo = ((1.5707963267948966 - hi) - sg * bh) + (6.123233995736766e-17 - sg * bl); /* + hi's rounding */
    const double z = num / den, w = z * z;
    double pw = -0.01917688711906226;
    pw = fma(pw, w, 0.03923165829558719);
    pw = fma(pw, w, -0.0508544973794026);
    pw = fma(pw, w, 0.0585814891280221);
    pw = fma(pw, w, -0.06664511447381948);
    pw = fma(pw, w, 0.07692183190826087);
    pw = fma(pw, w, -0.09090904578123903);
    pw = fma(pw, w, 0.11111111015256361);
    pw = fma(pw, w, -0.14285714284666542);
    pw = fma(pw, w, 0.1999999999999552);
    pw = fma(pw, w, -0.3333333333333333);
    return hi + (fma(z * w, pw, z) + lo);
}

static inline float atan2p_f32(float y, float x) {
    const float ax = fabsf(x);
    float num = y >= 2.4142137f * ax ? -x : copysignf(1.0f, x) * (y - ax);
    float den = y >= 2.4142137f * ax ? y : y + ax;
    float bh = y >= 2.4142137f * ax ? 0.0f : 0.7853981852531433f;
    float bl = y >= 2.4142137f * ax ? 0.0f : -2.1855694143368964e-08f;
    num = y <= 0.41421357f * ax ? y : num;
    den = y <= 0.41421357f * ax ? x : den;
    bh = y <= 0.41421357f * ax ? 1.5707963705062866f : bh;
    bl = y <= 0.41421357f * ax ? -4.371138828673793e-08f : bl;
    den = den == 0 ? 1.0f : den;
    const float sg = copysignf(1.0f, x), hi = 1.5707963705062866f - sg * bh;
    const float lo = ((1.5707963705062866f - hi) - sg * bh) + (-4.371138828673793e-08f - sg * bl);
    const float z = num / den, w = z * z;
    float pw = -0.06451927870512009f;
    pw = fmaf(pw, w, 0.10743731260299683f);
    pw = fmaf(pw, w, -0.14263956248760223f);
    pw = fmaf(pw, w, 0.19999539852142334f);
    pw = fmaf(pw, w, -0.3333333134651184f);
    return hi + (fmaf(z * w, pw, z) + lo);
}

#endif
