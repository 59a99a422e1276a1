/* The least work protected_moments' correction can add to a step, as hand-written single-thread loops over one
 * flat float32 buffer (benchmarks/correction_floor.py compiles and times them; nothing in torchpalm uses them).
 *
 * adamw:          PyTorch's AdamW (decoupled weight decay, bias correction) on w, g, m, v: the step every
 *                 training run does anyway.
 * adamw_dots:     the same sweep also accumulating what the correction decides on: <u, m_o> (u = the update),
 *                 <m_o, m_t> and |m_t|^2 (m_t the new first moment); |m_o|^2 is known from o's own step.
 * correct:        w += a m_o + b m_t, the correction itself; it needs the dot products over the whole buffer, so
 *                 it cannot share the sweep that computes them.
 * Partial sums run in float within 4096-element blocks and in double across blocks. */
#include <math.h>

static void adamw_block(float *restrict w, const float *restrict g, float *restrict m, float *restrict v,
                        long n, float lr, float b1, float b2, float eps, float wd, float bc1, float bc2_sqrt) {
    const float step = lr / bc1, decay = 1.0f - lr * wd;
#pragma omp simd
    for (long i = 0; i < n; i++) {
        float gi = g[i];
        float mi = m[i] + (1.0f - b1) * (gi - m[i]);
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * decay - step * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

void adamw(float *w, const float *g, float *m, float *v, long n, float lr, float b1, float b2, float eps,
           float wd, float bc1, float bc2_sqrt) {
    adamw_block(w, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2_sqrt);
}

void adamw_dots(float *restrict w, const float *restrict g, float *restrict m, float *restrict v,
                const float *restrict mo, long n, float lr, float b1, float b2, float eps, float wd, float bc1,
                float bc2_sqrt, double *out) {
    const float step = lr / bc1, decay = 1.0f - lr * wd;
    double u_mo = 0.0, mo_mt = 0.0, mt_mt = 0.0;
    for (long j = 0; j < n; j += 4096) {
        const long end = j + 4096 < n ? j + 4096 : n;
        float a = 0.0f, b = 0.0f, c = 0.0f;
#pragma omp simd reduction(+ : a, b, c)
        for (long i = j; i < end; i++) {
            float gi = g[i], wi = w[i], oi = mo[i];
            float mi = m[i] + (1.0f - b1) * (gi - m[i]);
            float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
            float wn = wi * decay - step * mi / (sqrtf(vi) / bc2_sqrt + eps);
            m[i] = mi;
            v[i] = vi;
            w[i] = wn;
            a += (wn - wi) * oi;
            b += oi * mi;
            c += mi * mi;
        }
        u_mo += a;
        mo_mt += b;
        mt_mt += c;
    }
    out[0] = u_mo;
    out[1] = mo_mt;
    out[2] = mt_mt;
}

void correct(float *restrict w, const float *restrict mo, const float *restrict mt, long n, float a, float b) {
#pragma omp simd
    for (long i = 0; i < n; i++)
        w[i] += a * mo[i] + b * mt[i];
}
