//! Random draws from an explicit, seeded CPU generator — PyTorch's `torch.Generator().manual_seed(seed)`.
//!
//! Several PEFT methods seed a generator of their own instead of the global one: VeRA and RandLoRA draw
//! their shared projections from `projection_prng_key`, FourierFT and WaveFT their coefficient locations
//! from `random_loc_seed`, SHiRA its mask from `random_seed`. tch exposes only the global generator, so
//! this module calls libtorch's own generator through a small C++ shim (`csrc/generator.cpp`): the numbers
//! are PyTorch's, and libtorch's global generator is left untouched, as in Python.
//!
//! ```
//! use peft_core::rng::Generator;
//! use tch::{Device, Kind, Tensor};
//!
//! let mut g = Generator::new(0)?;
//! let a = g.randperm(10)?;
//! let b = Generator::new(0)?.randperm(10)?;
//! assert!(a.equal(&b)); // same seed, same permutation
//! let mut t = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
//! g.uniform_(&mut t, -1.0, 1.0)?;
//! # Ok::<(), peft_core::PeftError>(())
//! ```

use crate::error::{PeftError, Result};
use std::ffi::{c_char, c_void, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn peft_core_generator_new(seed: u64) -> *mut c_void;
    fn peft_core_generator_free(g: *mut c_void);
    fn peft_core_uniform_(t: *mut C_tensor, from: f64, to: f64, g: *mut c_void) -> *mut c_char;
    fn peft_core_normal_(t: *mut C_tensor, mean: f64, std: f64, g: *mut c_void) -> *mut c_char;
    fn peft_core_randperm(n: i64, g: *mut c_void, out: *mut *mut C_tensor) -> *mut c_char;
    fn peft_core_rand(shape: *const i64, ndim: usize, g: *mut c_void, out: *mut *mut C_tensor)
        -> *mut c_char;
    fn peft_core_randn(
        shape: *const i64,
        ndim: usize,
        g: *mut c_void,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn peft_core_randn_kind(
        shape: *const i64,
        ndim: usize,
        dtype: std::ffi::c_int,
        g: *mut c_void,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn peft_core_default_cpu_state(out: *mut *mut C_tensor) -> *mut c_char;
    fn peft_core_set_default_cpu_state(state: *mut C_tensor) -> *mut c_char;
    fn peft_core_free_error(msg: *mut c_char);
}

/// `torch.random.fork_rng(devices=[])`: runs `f` and then puts the default CPU generator back in the
/// state it had before, so that draws inside `f` (often after a `manual_seed`) leave the caller's random
/// stream untouched — as PEFT does around randomized SVDs.
///
/// ```
/// use tch::{Device, Kind, Tensor};
///
/// tch::manual_seed(1);
/// let expected = Tensor::rand([3], (Kind::Float, Device::Cpu));
/// tch::manual_seed(1);
/// let inner = peft_core::rng::fork_default_cpu(|| {
///     tch::manual_seed(99);
///     Tensor::rand([2], (Kind::Float, Device::Cpu))
/// })?;
/// assert_eq!(inner.size(), [2]);
/// assert!(Tensor::rand([3], (Kind::Float, Device::Cpu)).equal(&expected));
/// # Ok::<(), peft_core::PeftError>(())
/// ```
///
/// # Errors
/// libtorch could not read or restore the state.
pub fn fork_default_cpu<T>(f: impl FnOnce() -> T) -> Result<T> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the shim writes an owned tensor to `out` or returns an owned message.
    let mut state =
        unsafe { take_tensor(peft_core_default_cpu_state(&mut out), out, "reading the RNG state") }?;
    let result = f();
    // SAFETY: a live tensor for the duration of the call.
    check(unsafe { peft_core_set_default_cpu_state(state.as_mut_ptr()) }, "restoring the RNG state")?;
    Ok(result)
}

/// A libtorch CPU generator (`torch.Generator`), seeded once.
#[derive(Debug)]
pub struct Generator {
    ptr: *mut c_void,
}

// SAFETY: the generator is owned by this value and libtorch locks it during each draw.
unsafe impl Send for Generator {}

fn check(err: *mut c_char, what: &str) -> Result<()> {
    // SAFETY: the C++ shims return null or a message allocated with `malloc`.
    unsafe { take_error(err, what) }
}

/// Turns the result of one of the project's C++ shims into a `Result`: null is success; anything else is
/// a NUL-terminated message the shim allocated with `malloc`, which is freed here.
///
/// # Safety
/// `err` is null or a pointer returned by such a shim, not used again after this call.
///
/// # Errors
/// The shim's message, prefixed with `what`.
pub unsafe fn take_error(err: *mut c_char, what: &str) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: per the contract, a NUL-terminated malloc'ed string, freed exactly once here.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { peft_core_free_error(err) };
    Err(PeftError::Invalid(format!("{what}: {msg}")))
}

/// [`take_error`], then the tensor the shim wrote to `out` on success.
///
/// # Safety
/// As [`take_error`]; on success `out` is a fresh heap `at::Tensor*` whose ownership passes to the result.
///
/// # Errors
/// As [`take_error`].
pub unsafe fn take_tensor(err: *mut c_char, out: *mut C_tensor, what: &str) -> Result<Tensor> {
    unsafe { take_error(err, what) }?;
    // SAFETY: per the contract, an owned tensor.
    Ok(unsafe { Tensor::from_ptr(out) })
}

impl Generator {
    /// `torch.Generator(device="cpu").manual_seed(seed)`.
    ///
    /// # Errors
    /// libtorch could not create the generator.
    pub fn new(seed: u64) -> Result<Self> {
        // SAFETY: returns an owned generator or null.
        let ptr = unsafe { peft_core_generator_new(seed) };
        if ptr.is_null() {
            return Err(PeftError::Invalid("libtorch could not create a CPU generator".into()));
        }
        Ok(Self { ptr })
    }

    /// `t.uniform_(from, to, generator=self)` in place.
    ///
    /// # Errors
    /// libtorch's error (e.g. a tensor that is not on the CPU).
    pub fn uniform_(&mut self, t: &mut Tensor, from: f64, to: f64) -> Result<()> {
        // SAFETY: a live tensor and generator for the duration of the call.
        check(unsafe { peft_core_uniform_(t.as_mut_ptr(), from, to, self.ptr) }, "uniform_ with a generator")
    }

    /// `t.normal_(mean, std, generator=self)` in place.
    ///
    /// # Errors
    /// libtorch's error.
    pub fn normal_(&mut self, t: &mut Tensor, mean: f64, std: f64) -> Result<()> {
        // SAFETY: as above.
        check(unsafe { peft_core_normal_(t.as_mut_ptr(), mean, std, self.ptr) }, "normal_ with a generator")
    }

    fn make(
        &mut self,
        what: &str,
        f: impl FnOnce(*mut c_void, *mut *mut C_tensor) -> *mut c_char,
    ) -> Result<Tensor> {
        let mut out: *mut C_tensor = std::ptr::null_mut();
        let err = f(self.ptr, &mut out);
        // SAFETY: the shim returned null with an owned tensor in `out`, or an owned message.
        unsafe { take_tensor(err, out, what) }
    }

    /// `torch.randperm(n, generator=self)` (int64).
    ///
    /// # Errors
    /// libtorch's error (a negative `n`).
    pub fn randperm(&mut self, n: i64) -> Result<Tensor> {
        // SAFETY: the C++ side writes a new tensor or returns an error.
        self.make("randperm with a generator", |g, out| unsafe { peft_core_randperm(n, g, out) })
    }

    /// `torch.rand(shape, generator=self)` (f32).
    ///
    /// # Errors
    /// libtorch's error.
    pub fn rand(&mut self, shape: &[i64]) -> Result<Tensor> {
        // SAFETY: `shape` outlives the call.
        self.make("rand with a generator", |g, out| unsafe {
            peft_core_rand(shape.as_ptr(), shape.len(), g, out)
        })
    }

    /// `torch.randn(shape, generator=self)` (f32).
    ///
    /// # Errors
    /// libtorch's error.
    pub fn randn(&mut self, shape: &[i64]) -> Result<Tensor> {
        // SAFETY: `shape` outlives the call.
        self.make("randn with a generator", |g, out| unsafe {
            peft_core_randn(shape.as_ptr(), shape.len(), g, out)
        })
    }
}

/// PEFT's sparse coefficient locations (FourierFT's and WaveFT's `random_loc_seed`): `n` distinct cells of
/// a `(rows, cols)` matrix, the first `n` entries `i` of `randperm(rows · cols)` from a generator seeded
/// with `seed`, as row `i // cols` and column `i % cols`. Returns `(2, n)` int64 on the CPU (rows first).
/// A negative seed is passed as `seed as u64`, which is how `torch.Generator.manual_seed` wraps it.
///
/// The locations are never saved: the same seed gives them back on load.
///
/// # Errors
/// libtorch's error.
pub fn sparse_positions(seed: i64, rows: i64, cols: i64, n: i64) -> Result<Tensor> {
    let what = "drawing sparse coefficient locations";
    let flat = Generator::new(seed as u64)?
        .randperm(rows * cols)?
        .f_narrow(0, 0, n)
        .map_err(PeftError::torch(what))?;
    let row = flat.f_floor_divide_scalar(cols).map_err(PeftError::torch(what))?;
    let col = flat.f_remainder(cols).map_err(PeftError::torch(what))?;
    Tensor::f_stack(&[row, col], 0).map_err(PeftError::torch(what))
}

impl Generator {
    /// `torch.randn(shape, dtype=kind, generator=self)`: drawn in `kind` (a half-precision draw is not the
    /// f32 draw rounded).
    ///
    /// # Errors
    /// libtorch's error (a kind randn cannot produce).
    pub fn randn_kind(&mut self, shape: &[i64], kind: tch::Kind) -> Result<Tensor> {
        // c10::ScalarType codes of the floating kinds randn draws.
        let dtype = match kind {
            tch::Kind::Half => 5,
            tch::Kind::Float => 6,
            tch::Kind::Double => 7,
            tch::Kind::BFloat16 => 15,
            other => return Err(PeftError::Invalid(format!("randn cannot draw {other:?} values"))),
        };
        // SAFETY: `shape` outlives the call.
        self.make("randn with a generator", |g, out| unsafe {
            peft_core_randn_kind(shape.as_ptr(), shape.len(), dtype, g, out)
        })
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // SAFETY: owned, freed once.
        unsafe { peft_core_generator_free(self.ptr) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Values printed by PyTorch 2.13 for `g = torch.Generator().manual_seed(7)`: `torch.randperm(8,
    /// generator=g)`, then `torch.empty(3).uniform_(-1, 1, generator=g)`, then `torch.randn(3, generator=g)`.
    #[test]
    fn draws_equal_pytorchs_for_the_same_seed_and_leave_the_global_generator_alone() {
        tch::manual_seed(0);
        let mut g = Generator::new(7).unwrap();
        let p: Vec<i64> = Vec::try_from(g.randperm(8).unwrap()).unwrap();
        assert_eq!(p, [7, 0, 3, 4, 1, 5, 2, 6]);
        let mut u = Tensor::empty([3], (Kind::Float, Device::Cpu));
        g.uniform_(&mut u, -1.0, 1.0).unwrap();
        let u: Vec<f32> = Vec::try_from(u).unwrap();
        assert_eq!(u, [0.259_472_73, -0.269_367_7, 0.702_536_7]);
        let n: Vec<f32> = Vec::try_from(g.randn(&[3]).unwrap()).unwrap();
        assert_eq!(n, [0.445_742_4, -0.706_832_47, -1.574_967_7]);
        // torch.manual_seed(0); torch.rand(2): the global generator did not move.
        let r: Vec<f32> = Vec::try_from(Tensor::rand([2], (Kind::Float, Device::Cpu))).unwrap();
        assert_eq!(r, [0.496_256_6, 0.768_221_8]);
    }

    /// `torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=…)` in PyTorch 2.13: f32 equals the
    /// plain draw; bf16 is drawn in bf16.
    #[test]
    fn randn_kind_draws_in_the_requested_dtype() {
        let f: Vec<f32> =
            Vec::try_from(Generator::new(7).unwrap().randn_kind(&[3], Kind::Float).unwrap()).unwrap();
        let plain: Vec<f32> = Vec::try_from(Generator::new(7).unwrap().randn(&[3]).unwrap()).unwrap();
        assert_eq!(f, plain);
        let b = Generator::new(7).unwrap().randn_kind(&[3], Kind::BFloat16).unwrap();
        assert_eq!(b.kind(), Kind::BFloat16);
        let b: Vec<f32> = Vec::try_from(b.to_kind(Kind::Float)).unwrap();
        assert_eq!(b, [-0.146_484_38, 0.785_156_25, 0.945_312_5]);
        assert!(Generator::new(7).unwrap().randn_kind(&[3], Kind::Int64).is_err());
    }
}
