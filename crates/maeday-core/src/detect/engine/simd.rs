//! Eight f32 lanes on each architecture's vectors: what our CPU ops' kernels are written
//! over ([`Vector`]). One AVX2 register with FMA on x86-64 ([`Avx2`]), two NEON registers
//! on aarch64 ([`Neon`]), and plain arrays everywhere ([`Portable`]: the fallback for
//! x86-64 CPUs without AVX2, and what tests compare the fast kernels with).

/// Lanes of one [`Vector`].
pub const W: usize = 8;

/// # Safety
/// Every method runs instructions the CPU must have (the caller checks); loads and
/// stores touch [`W`] floats from the pointer.
pub trait Vector: Copy {
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(at: *const f32) -> Self;
    unsafe fn store(self, at: *mut f32);
    /// `self + x * y`, fused where the CPU fuses.
    unsafe fn mul_add(self, x: Self, y: Self) -> Self;
    unsafe fn mul(self, x: Self) -> Self;
    unsafe fn max(self, x: Self) -> Self;
    unsafe fn min(self, x: Self) -> Self;
    /// The 16 floats from `at`, split: (those at even offsets, those at odd offsets).
    unsafe fn load_pairs(at: *const f32) -> (Self, Self);
}

/// Whether this build has a fast [`Vector`] for this CPU: AVX2 + FMA on x86-64, NEON
/// (always there) on aarch64.
pub fn fast_on_this_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
    }
}

/// Run `f` compiled for AVX2 where the CPU has it (x86-64): plain loops inlined into it
/// are vectorised 8 lanes wide instead of SSE2's 4. The arithmetic is the same (Rust never
/// fuses a multiply and an add on its own), so results do not depend on the CPU.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Eight lanes in a plain array: any CPU, as fast as the compiler makes it.
#[derive(Clone, Copy)]
pub struct Portable([f32; W]);

impl Portable {
    #[inline(always)]
    fn map2(self, x: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut out = self.0;
        for (o, &b) in out.iter_mut().zip(&x.0) {
            *o = f(*o, b);
        }
        Portable(out)
    }
}

impl Vector for Portable {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; W])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable([x; W])
    }
    #[inline(always)]
    unsafe fn load(at: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(at as *const [f32; W]))
    }
    #[inline(always)]
    unsafe fn store(self, at: *mut f32) {
        std::ptr::write_unaligned(at as *mut [f32; W], self.0)
    }
    #[inline(always)]
    unsafe fn mul_add(self, x: Self, y: Self) -> Self {
        let mut out = self.0;
        for ((o, &a), &b) in out.iter_mut().zip(&x.0).zip(&y.0) {
            *o += a * b;
        }
        Portable(out)
    }
    #[inline(always)]
    unsafe fn mul(self, x: Self) -> Self {
        self.map2(x, |a, b| a * b)
    }
    #[inline(always)]
    unsafe fn max(self, x: Self) -> Self {
        self.map2(x, f32::max)
    }
    #[inline(always)]
    unsafe fn min(self, x: Self) -> Self {
        self.map2(x, f32::min)
    }
    #[inline(always)]
    unsafe fn load_pairs(at: *const f32) -> (Self, Self) {
        let (mut even, mut odd) = ([0f32; W], [0f32; W]);
        for l in 0..W {
            even[l] = *at.add(2 * l);
            odd[l] = *at.add(2 * l + 1);
        }
        (Portable(even), Portable(odd))
    }
}

#[cfg(target_arch = "x86_64")]
pub use self::x86::Avx2;
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256);

    impl crate::detect::engine::simd::Vector for Avx2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2(_mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(at))
        }
        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            _mm256_storeu_ps(at, self.0)
        }
        #[inline(always)]
        unsafe fn mul_add(self, x: Self, y: Self) -> Self {
            Avx2(_mm256_fmadd_ps(x.0, y.0, self.0))
        }
        #[inline(always)]
        unsafe fn mul(self, x: Self) -> Self {
            Avx2(_mm256_mul_ps(self.0, x.0))
        }
        #[inline(always)]
        unsafe fn max(self, x: Self) -> Self {
            Avx2(_mm256_max_ps(self.0, x.0))
        }
        #[inline(always)]
        unsafe fn min(self, x: Self) -> Self {
            Avx2(_mm256_min_ps(self.0, x.0))
        }
        #[inline(always)]
        unsafe fn load_pairs(at: *const f32) -> (Self, Self) {
            let (lo, hi) = (_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)));
            // Within each 128-bit half: [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6]; then the
            // 64-bit quarters reordered 0, 2, 1, 3.
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            let odd = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
            let order = |v: __m256| {
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
            };
            (Avx2(order(even)), Avx2(order(odd)))
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use self::arm::Neon;
#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    #[derive(Clone, Copy)]
    pub struct Neon(float32x4_t, float32x4_t);

    impl crate::detect::engine::simd::Vector for Neon {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Neon(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Neon(vdupq_n_f32(x), vdupq_n_f32(x))
        }
        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            Neon(vld1q_f32(at), vld1q_f32(at.add(4)))
        }
        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            vst1q_f32(at, self.0);
            vst1q_f32(at.add(4), self.1)
        }
        #[inline(always)]
        unsafe fn mul_add(self, x: Self, y: Self) -> Self {
            Neon(vfmaq_f32(self.0, x.0, y.0), vfmaq_f32(self.1, x.1, y.1))
        }
        #[inline(always)]
        unsafe fn mul(self, x: Self) -> Self {
            Neon(vmulq_f32(self.0, x.0), vmulq_f32(self.1, x.1))
        }
        #[inline(always)]
        unsafe fn max(self, x: Self) -> Self {
            Neon(vmaxq_f32(self.0, x.0), vmaxq_f32(self.1, x.1))
        }
        #[inline(always)]
        unsafe fn min(self, x: Self) -> Self {
            Neon(vminq_f32(self.0, x.0), vminq_f32(self.1, x.1))
        }
        #[inline(always)]
        unsafe fn load_pairs(at: *const f32) -> (Self, Self) {
            let (a, b) = (vld2q_f32(at), vld2q_f32(at.add(8)));
            (Neon(a.0, b.0), Neon(a.1, b.1))
        }
    }
}
