//! NumPy's legacy `numpy.random.RandomState` (the Mersenne Twister MT19937) for the draws PEFT makes
//! through libraries that seed one, such as scikit-learn's `random_state=<int>` (AdaMSS's KMeans).
//!
//! NumPy seeds an integer the classic way (`init_genrand`), draws doubles from two 32-bit outputs
//! (`(a >> 5, b >> 6)` → 53 bits) and picks without replacement under probabilities by repeated
//! inverse-CDF rounds; each is replayed here so that the same seed gives the same numbers.
//!
//! ```
//! use peft_core::numpy_random::RandomState;
//!
//! let mut rs = RandomState::new(0);
//! // numpy.random.RandomState(0).random_sample() == 0.5488135039273248
//! assert_eq!(rs.random_sample(), 0.5488135039273248);
//! ```

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// `numpy.random.RandomState(seed)` for an integer seed in `[0, 2³²)`.
#[derive(Clone)]
pub struct RandomState {
    mt: [u32; N],
    pos: usize,
}

impl std::fmt::Debug for RandomState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RandomState").field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl RandomState {
    /// NumPy's `_legacy_seeding(seed)` for an integer: `init_genrand(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            let prev = mt[i - 1];
            mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Self { mt, pos: N }
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.twist();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        let mag = |y: u32| if y & 1 == 1 { MATRIX_A } else { 0 };
        for i in 0..N {
            let y = (self.mt[i] & UPPER_MASK) | (self.mt[(i + 1) % N] & LOWER_MASK);
            self.mt[i] = self.mt[(i + M) % N] ^ (y >> 1) ^ mag(y);
        }
        self.pos = 0;
    }

    /// `random_sample()`: a double in `[0, 1)` from 53 random bits.
    pub fn random_sample(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) / 9_007_199_254_740_992.0
    }

    /// `choice(len(p), size, replace=False, p=p)`: NumPy's rounds of `size − found` uniform draws mapped
    /// through the CDF of the not-yet-chosen entries (`cumsum`, divided by its last value,
    /// `searchsorted(side="right")`), keeping the first occurrence of each new index in draw order.
    ///
    /// # Panics
    /// When fewer than `size` entries of `p` are positive (NumPy raises `ValueError`).
    pub fn choice_without_replacement(&mut self, p: &[f64], size: usize) -> Vec<usize> {
        assert!(p.iter().filter(|&&v| v > 0.0).count() >= size, "Fewer non-zero entries in p than size");
        let mut p = p.to_vec();
        let mut found: Vec<usize> = Vec::with_capacity(size);
        while found.len() < size {
            let x: Vec<f64> = (0..size - found.len()).map(|_| self.random_sample()).collect();
            for &f in &found {
                p[f] = 0.0;
            }
            let mut cdf = Vec::with_capacity(p.len());
            let mut acc = 0.0f64;
            for &v in &p {
                acc += v;
                cdf.push(acc);
            }
            let last = acc;
            for c in &mut cdf {
                *c /= last;
            }
            // searchsorted(side="right"): the first index whose value is greater than x.
            let mut round: Vec<usize> = Vec::with_capacity(x.len());
            for &xi in &x {
                let idx = cdf.partition_point(|&c| c <= xi);
                if !round.contains(&idx) {
                    round.push(idx);
                }
            }
            found.extend(round);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::RandomState;

    #[test]
    fn matches_numpy() {
        // The reference MT19937's first output for init_genrand(5489).
        let mut rs = RandomState::new(5489);
        assert_eq!(rs.next_u32(), 3_499_211_612);
        let mut rs = RandomState::new(123_456_789);
        let v: Vec<f64> = (0..2).map(|_| rs.random_sample()).collect();
        // numpy.random.RandomState(123456789).random_sample(2)
        assert_eq!(v, [0.532_833_024_789_759, 0.534_136_600_890_416_6]);
    }
}
