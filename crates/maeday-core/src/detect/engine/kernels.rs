//! Which family of matmul kernels tract runs on this CPU (`model.cpu_kernels`).
//!
//! Why: tract ranks its kernel families with a cost model fitted on one CPU per vendor, and
//! the fit does not carry over: on a double-pumped Zen 4 core tract picks its AVX-512 16x12
//! kernel, while its AVX2/FMA 16x6 kernel runs the default model 8-12% faster per frame
//! (`../shared/notes/inference-findings.md`). Which is faster is a property of the CPU, so it
//! is measured here, never hard-coded.
//!
//! How: tract resolves the instruction set once per process, at its first matmul plan
//! (`tract_linalg::isa::native`, a `OnceLock`), applying its `TRACT_CPU_ISA` knob then; no
//! API restricts the kernels of one plan. So the family is a process-wide choice made before
//! the first plan: [`select`] runs once, times a representative matmul of the default
//! model (the encoder's and decoder's MLP shapes, with the activations packed on every run
//! as tract does) with each family this CPU has, through tract-linalg's dispatch built for
//! that family's feature set (without touching the process's own), keeps the faster and sets
//! the knob through tract's API, not the environment. A family can only remove features
//! from what the CPU reports, so a family the CPU lacks is never picked. A
//! `TRACT_CPU_ISA` in the environment wins over all of this (it is reported as such).

use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Deserialize;

/// `model.cpu_kernels`: `auto` (measure, keep the faster), `tract` (tract's own choice) or
/// a family by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum CpuKernels {
    #[default]
    Auto,
    Tract,
    Family(Family),
}

/// A family of f32 matmul kernels, named after the widest instruction set its kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// x86-64 AVX-512 (`avx512f`) kernels: 16x12, 32x6, ...
    Avx512,
    /// x86-64 AVX2 + FMA kernels (16x6, ...): AVX-512 and AMX taken out of tract's set.
    Avx2,
    /// aarch64 SVE2 kernels (SME taken out).
    Sve2,
    /// aarch64 Advanced SIMD kernels (SVE2 and SME taken out).
    Neon,
}

const FAMILIES: [Family; 4] = [Family::Avx512, Family::Avx2, Family::Sve2, Family::Neon];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Avx512 => "avx512",
            Family::Avx2 => "avx2",
            Family::Sve2 => "sve2",
            Family::Neon => "neon",
        }
    }

    /// tract features this family takes out of the CPU's set (`TRACT_CPU_ISA` syntax).
    fn removes(self) -> &'static [&'static str] {
        match self {
            Family::Avx512 => &[],
            Family::Sve2 => &["sme", "sme2"],
            Family::Avx2 => &[
                "avx512f",
                "avx512vnni",
                "avx512fp16",
                "amx-int8",
                "amx-bf16",
            ],
            Family::Neon => &["sve2", "sme", "sme2"],
        }
    }

    /// The f32-relevant features this family's kernels run with (for the probe's dispatch).
    fn probe_set(self) -> &'static str {
        match self {
            Family::Avx512 => "x86_64,avx,avx2,fma,f16c,avx512f",
            Family::Avx2 => "x86_64,avx,avx2,fma,f16c",
            Family::Sve2 => "aarch64,sve2",
            Family::Neon => "aarch64",
        }
    }

    /// Whether this CPU can run the family (asked of the CPU, not of tract).
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match self {
                Family::Avx512 => fma && is_x86_feature_detected!("avx512f"),
                Family::Avx2 => fma,
                Family::Sve2 | Family::Neon => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            match self {
                Family::Sve2 => std::arch::is_aarch64_feature_detected!("sve2"),
                Family::Neon => true,
                Family::Avx512 | Family::Avx2 => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    /// The family tract's own (unedited) set would use on this CPU: the widest available.
    fn widest() -> Option<Family> {
        FAMILIES.into_iter().find(|f| f.available())
    }
}

impl std::str::FromStr for CpuKernels {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(CpuKernels::Auto),
            "tract" => Ok(CpuKernels::Tract),
            other => match FAMILIES.into_iter().find(|f| f.name() == other) {
                Some(f) => Ok(CpuKernels::Family(f)),
                None => bail!(
                    "unknown kernel family {other:?} (expected auto, tract, avx512, avx2, sve2 \
                     or neon)"
                ),
            },
        }
    }
}

impl TryFrom<String> for CpuKernels {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl CpuKernels {
    /// Refuse a family this CPU cannot run (for `--check` and at load).
    pub fn check(self) -> Result<()> {
        if let CpuKernels::Family(f) = self {
            if !f.available() {
                bail!(
                    "kernel family {} is not available on this CPU (available: {})",
                    f.name(),
                    available_names()
                );
            }
        }
        Ok(())
    }
}

fn available_names() -> String {
    let names: Vec<_> = FAMILIES
        .into_iter()
        .filter(|f| f.available())
        .map(Family::name)
        .collect();
    if names.is_empty() {
        "none: tract's portable kernels".into()
    } else {
        names.join(", ")
    }
}

/// The process's kernel family and how it was chosen, for logs and `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelChoice {
    /// The family tract runs (read back from tract's resolved set), `generic` if none.
    pub family: &'static str,
    /// `auto`, `tract`, `config`, `only one`, `TRACT_CPU_ISA` or `preset` (tract had resolved
    /// its set before this choice could apply).
    pub how: &'static str,
    /// GFLOP/s of the probe per family, when measured.
    pub measured: Vec<(&'static str, f64)>,
}

impl std::fmt::Display for KernelChoice {
    /// `avx2 kernels (auto)`; the alternate form `{:#}` adds the measurements.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} kernels ({}", self.family, self.how)?;
        if f.alternate() {
            for (name, gflops) in &self.measured {
                write!(f, ", {name} {gflops:.0} GFLOP/s")?;
            }
        }
        f.write_str(")")
    }
}

static CHOICE: OnceLock<(CpuKernels, KernelChoice)> = OnceLock::new();

/// Choose the kernel family for this process (once: later calls return the first choice
/// and warn when they ask for a different one). Must run before tract plans anything.
pub fn select(request: CpuKernels) -> Result<&'static KernelChoice> {
    request.check()?;
    let (first, choice) = CHOICE.get_or_init(|| (request, choose(request)));
    if *first != request {
        log::warn!(
            "cpu_kernels {request:?} asked after {first:?} was applied: tract's kernels are \
             chosen once per process, keeping {choice}"
        );
    }
    Ok(choice)
}

fn choose(request: CpuKernels) -> KernelChoice {
    if std::env::var_os("TRACT_CPU_ISA").is_some() {
        return resolved("TRACT_CPU_ISA", Vec::new());
    }
    let candidates: Vec<Family> = FAMILIES.into_iter().filter(|f| f.available()).collect();
    let (family, how, measured) = match request {
        CpuKernels::Tract => (None, "tract", Vec::new()),
        CpuKernels::Family(f) => (Some(f), "config", Vec::new()),
        CpuKernels::Auto if candidates.len() < 2 => (None, "only one", Vec::new()),
        CpuKernels::Auto => {
            let measured: Vec<(Family, f64)> = candidates
                .iter()
                .filter_map(|&f| probe(f).map(|g| (f, g)))
                .collect();
            let best = measured
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|m| m.0);
            let named = measured.iter().map(|(f, g)| (f.name(), *g)).collect();
            (best, "auto", named)
        }
    };
    if let Some(f) = family.filter(|&f| Some(f) != Family::widest()) {
        tract_linalg::knobs::TRACT_CPU_ISA.set(Some(
            f.removes()
                .iter()
                .map(|r| format!("-{r}"))
                .collect::<Vec<_>>()
                .join(","),
        ));
    }
    let choice = resolved(how, measured);
    if family.is_some_and(|f| f.name() != choice.family) {
        log::warn!(
            "tract resolved its instruction set before the kernel choice ({:?}) could apply: \
             running {} kernels",
            family.map(Family::name),
            choice.family
        );
        return KernelChoice {
            how: "preset",
            ..choice
        };
    }
    log::info!("matmul kernels: {choice:#}");
    choice
}

/// What tract actually resolved (this is where its set gets fixed, if nothing did before).
fn resolved(how: &'static str, measured: Vec<(&'static str, f64)>) -> KernelChoice {
    use tract_linalg::isa::Isa;
    let set = tract_linalg::isa::native();
    let family = if set.has(Isa::X86_64Avx512f) {
        "avx512"
    } else if set.has(Isa::X86_64Avx2) && set.has(Isa::X86_64Fma) {
        "avx2"
    } else if set.has(Isa::Aarch64Sve2) {
        "sve2"
    } else if set.has(Isa::Aarch64) {
        "neon"
    } else {
        "generic"
    };
    KernelChoice {
        family,
        how,
        measured,
    }
}

/// The probe's matmuls, (m, k, n) as tract sees them (weights m x k, activations k x n):
/// the default model's encoder and decoder MLP layers for 16 masks (one of two workers at
/// N = 32).
const PROBE_SHAPES: [(usize, usize, usize); 2] = [(768, 192, 16 * 50), (512, 128, 16 * 197)];

/// GFLOP/s of `family` on the probe shapes (best of 5 after one warm-up run), or `None` if
/// tract offers no kernel for them (then the family is not a candidate).
fn probe(family: Family) -> Option<f64> {
    let isa: tract_linalg::isa::IsaSet = family.probe_set().parse().ok()?;
    let dispatch = tract_linalg::MmmDispatch::for_isa(isa);
    let mut seconds = 0.0;
    let mut flops = 0.0;
    for (m, k, n) in PROBE_SHAPES {
        seconds += time_matmul(&dispatch, m, k, n)?;
        flops += 2.0 * (m * k * n) as f64;
    }
    Some(flops / seconds / 1e9)
}

/// Best time of one matmul with its activations packed in the loop.
fn time_matmul(dispatch: &tract_linalg::MmmDispatch, m: usize, k: usize, n: usize) -> Option<f64> {
    use tract_core::prelude::*;
    use tract_linalg::mmm::{AsInputValue, FusedSpec, Query};
    let (mmm, packing, extractor) =
        dispatch.pick(&Query::plain(DatumType::F32, Some(m), Some(k), Some(n)))?;
    if extractor.is_some() {
        return None;
    }
    let fill = |len: usize| {
        (0..len)
            .map(|i| ((i % 13) as f32 - 6.0) / 7.0)
            .collect::<Vec<_>>()
    };
    let a = Tensor::from_shape(&[m, k], &fill(m * k)).ok()?;
    let b = Tensor::from_shape(&[k, n], &fill(k * n)).ok()?;
    let (pack_a, pack_b) = &mmm.packings()[packing];
    let pa = pack_a.prepare_one(&a, 1, 0).ok()?;
    let mut best = f64::INFINITY;
    // SAFETY: the kernel runs on this CPU (its family is available), and the operands were
    // packed by the kernel's own packers for the packing index passed.
    unsafe {
        let mut scratch = mmm.allocate_scratch_space();
        for _ in 0..6 {
            let t = Instant::now();
            let pb = pack_b.prepare_one(&b, 0, 1).ok()?;
            let spec = [FusedSpec::AddMatMul {
                a: AsInputValue::Borrowed(&*pa),
                b: AsInputValue::Borrowed(&*pb),
                packing,
            }];
            mmm.run_with_scratch_space(m, n, &mut *scratch, &spec)
                .ok()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for f in FAMILIES {
            assert_eq!(
                f.name().parse::<CpuKernels>().unwrap(),
                CpuKernels::Family(f)
            );
        }
        assert_eq!("auto".parse::<CpuKernels>().unwrap(), CpuKernels::Auto);
        let e = "avx1024".parse::<CpuKernels>().unwrap_err().to_string();
        assert!(e.contains("avx1024") && e.contains("avx2"), "{e}");
    }

    #[test]
    fn a_family_the_cpu_lacks_is_refused() {
        // Every CPU lacks the other architecture's families.
        let foreign = if cfg!(target_arch = "x86_64") {
            Family::Neon
        } else {
            Family::Avx2
        };
        let e = CpuKernels::Family(foreign).check().unwrap_err().to_string();
        assert!(e.contains("not available on this CPU"), "{e}");
    }

    #[test]
    fn the_probe_measures_every_available_family() {
        for f in FAMILIES.into_iter().filter(|f| f.available()) {
            let g = probe(f).expect("a kernel for the probe shapes");
            // A rate, not a speed claim: under qemu an emulated SVE2 kernel runs at 0.3
            // GFLOP/s, so only a measurement that is no number at all is a broken probe.
            assert!(g.is_finite() && g > 0.0, "{}: {g} GFLOP/s", f.name());
        }
    }
}
