//! NumPy's `np.random.default_rng(seed)` — `SeedSequence` seeding a `PCG64` bit generator — and the two
//! `Generator` methods UniLoRA's index map draws with: `choice(n, size, replace=False)` and `shuffle`.
//!
//! PEFT builds UniLoRA's index map with NumPy rather than torch, so the same `proj_seed` only gives the same
//! map if every word of NumPy's stream is replayed: the seed's hashing into the 128-bit state, the
//! XSL-RR output, the 32-bit halves NumPy hands out one after the other, Lemire's bounded draws with their
//! rejection step, and the two algorithms `choice` switches between (Floyd's sampling, or a partial
//! shuffle of the whole range for large populations). The numbers were checked against NumPy 2.4
//! (`tests` below and the parity fixtures).

/// A 128-bit permuted congruential generator as NumPy's `PCG64` runs it, plus the spare 32-bit half NumPy
/// keeps for the next 32-bit request.
#[derive(Clone, Debug)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    spare: Option<u32>,
}

/// The LCG multiplier of PCG's 128-bit generators.
const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

// SeedSequence's hashing constants.
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

/// `SeedSequence(seed).generate_state(n_words, np.uint64)`: the seed's 32-bit words (least significant
/// first) mixed into a pool of four, then stretched to `n_words` 64-bit words.
fn seed_sequence_state(seed: u64, n_words: usize) -> Vec<u64> {
    let entropy: Vec<u32> =
        if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
    let mut pool = [0u32; POOL_SIZE];
    let mut hash_const = INIT_A;
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const);
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                pool[dst] = mix(pool[dst], hashmix(pool[src], &mut hash_const));
            }
        }
    }
    // Entropy beyond the pool size (never: a u64 seed has at most two words) would be mixed in here.
    let mut hash_const = INIT_B;
    let words: Vec<u32> = (0..2 * n_words)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect();
    words.chunks(2).map(|w| u64::from(w[0]) | (u64::from(w[1]) << 32)).collect()
}

impl Pcg64 {
    /// `np.random.default_rng(seed).bit_generator`.
    pub fn new(seed: u64) -> Self {
        let s = seed_sequence_state(seed, 4);
        let initstate = (u128::from(s[0]) << 64) | u128::from(s[1]);
        let initseq = (u128::from(s[2]) << 64) | u128::from(s[3]);
        let mut g = Self { state: 0, inc: (initseq << 1) | 1, spare: None };
        g.step();
        g.state = g.state.wrapping_add(initstate);
        g.step();
        g
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// The next 64-bit output (XSL-RR of the advanced state).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let s = self.state;
        (((s >> 64) as u64) ^ (s as u64)).rotate_right((s >> 122) as u32)
    }

    /// The next 32-bit output: NumPy splits each 64-bit output, low half first.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let next = self.next_u64();
        self.spare = Some((next >> 32) as u32);
        next as u32
    }

    /// NumPy's `random_bounded_uint64(0, rng)` without masking: a uniform integer in `[0, rng]` by
    /// Lemire's multiply-and-reject, on 32-bit draws when `rng` fits in 32 bits.
    pub fn bounded(&mut self, rng: u64) -> u64 {
        if rng == 0 {
            return 0;
        }
        if rng <= u64::from(u32::MAX) {
            if rng == u64::from(u32::MAX) {
                return u64::from(self.next_u32());
            }
            let rng = rng as u32;
            let excl = rng + 1;
            let mut m = u64::from(self.next_u32()) * u64::from(excl);
            let mut leftover = m as u32;
            if leftover < excl {
                let threshold = (u32::MAX - rng) % excl;
                while leftover < threshold {
                    m = u64::from(self.next_u32()) * u64::from(excl);
                    leftover = m as u32;
                }
            }
            return m >> 32;
        }
        if rng == u64::MAX {
            return self.next_u64();
        }
        let excl = rng + 1;
        let mut m = u128::from(self.next_u64()) * u128::from(excl);
        let mut leftover = m as u64;
        if leftover < excl {
            let threshold = (u64::MAX - rng) % excl;
            while leftover < threshold {
                m = u128::from(self.next_u64()) * u128::from(excl);
                leftover = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// NumPy's `random_interval(max)`: a uniform integer in `[0, max]` by masking and rejecting.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = mask_of(max);
        if max <= u64::from(u32::MAX) {
            loop {
                let v = u64::from(self.next_u32()) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `Generator.shuffle(x)` of a 1-d array: Fisher–Yates from the end, positions by
    /// [`Pcg64::interval`].
    pub fn shuffle(&mut self, x: &mut [i64]) {
        for i in (1..x.len()).rev() {
            let j = self.interval(i as u64) as usize;
            x.swap(i, j);
        }
    }

    /// NumPy's `_shuffle_int(n, first)`: Fisher–Yates of positions `n-1` down to `first`, positions by
    /// [`Pcg64::bounded`] (what `choice` uses, unlike `shuffle`).
    fn shuffle_int(&mut self, x: &mut [i64], first: usize) {
        for i in (first..x.len()).rev() {
            let j = self.bounded(i as u64) as usize;
            x.swap(i, j);
        }
    }

    /// `Generator.choice(pop, size, replace=False)` (shuffled, no weights): `size` distinct integers of
    /// `[0, pop)`. Populations over 10 000 asked for more than a fiftieth of themselves take the tail of a
    /// partial shuffle of the whole range; the others Floyd's algorithm, then a shuffle.
    ///
    /// # Panics
    /// `size > pop` (NumPy raises; callers check).
    pub fn choice_without_replacement(&mut self, pop: usize, size: usize) -> Vec<i64> {
        assert!(size <= pop, "cannot take {size} distinct values out of {pop}");
        if pop > 10_000 && size > pop / 50 {
            let mut idx: Vec<i64> = (0..pop as i64).collect();
            self.shuffle_int(&mut idx, (pop - size).max(1));
            return idx.split_off(pop - size);
        }
        let mut idx = Vec::with_capacity(size);
        let mut seen = std::collections::HashSet::with_capacity(size);
        for j in (pop - size)..pop {
            let v = self.bounded(j as u64) as i64;
            // Floyd: a value drawn before gives way to `j`, which cannot have been drawn yet.
            let pick = if seen.insert(v) { v } else { j as i64 };
            if pick != v {
                seen.insert(pick);
            }
            idx.push(pick);
        }
        self.shuffle_int(&mut idx, 1);
        idx
    }
}

/// The smallest all-ones bit mask covering `max`.
fn mask_of(max: u64) -> u64 {
    let mut m = max;
    for s in [1, 2, 4, 8, 16, 32] {
        m |= m >> s;
    }
    m
}

/// PEFT's `UniLoraModel.generate_index(D, d, seed)`: each of the `d` entries of θ appears
/// `⌊D/d⌋` times, `D mod d` of them (drawn without replacement) once more, and the `D` values are shuffled
/// — all with `np.random.default_rng(seed)`.
pub fn generate_index(lora_param_count: usize, theta_d_length: usize, seed: u64) -> Vec<i64> {
    let base = lora_param_count / theta_d_length;
    let remaining = lora_param_count % theta_d_length;
    let mut rng = Pcg64::new(seed);
    let mut data: Vec<i64> = Vec::with_capacity(lora_param_count);
    for v in 0..theta_d_length as i64 {
        data.extend(std::iter::repeat_n(v, base));
    }
    if remaining > 0 {
        data.extend(rng.choice_without_replacement(theta_d_length, remaining));
    }
    rng.shuffle(&mut data);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `np.random.default_rng(42).bit_generator.random_raw(2)`, and afresh `integers(0, 2**32, 2,
    /// dtype=np.uint32)` (the halves of the first word, low first).
    #[test]
    fn raw_words_equal_numpys() {
        let mut g = Pcg64::new(42);
        assert_eq!([g.next_u64(), g.next_u64()], [0xc621_fbcd_16d9_2688, 0x705a_5661_a791_ffc1]);
        let mut g = Pcg64::new(42);
        assert_eq!((g.next_u32(), g.next_u32()), (383_329_928, 3_324_115_917));
    }

    /// `Σ v·(i mod 1000003 + 1)` over the map, as the oracle computed it.
    fn checksum(v: &[i64]) -> i64 {
        v.iter().enumerate().map(|(i, &x)| x * ((i as i64) % 1_000_003 + 1)).sum()
    }

    /// `UniLoraModel.generate_index(D, d, seed)` of PEFT 0.21.2 on NumPy 2.4: the first values and a
    /// checksum, over Floyd's branch, the tail-shuffle branch (`d > 10000`), a two-word seed and `D < d`.
    #[test]
    fn index_maps_equal_pefts() {
        let cases: [(usize, usize, u64, &[i64], i64); 8] = [
            (10, 4, 0, &[2, 3, 3, 1, 0, 1, 2, 0, 3, 2], 88),
            (17, 5, 42, &[0, 3, 4, 2, 4, 3, 2, 2, 1, 0, 3, 1], 259),
            (3, 8, 7, &[5, 4, 7], 34),
            (60, 16, 42, &[8, 6, 3, 9, 7, 13, 0, 15, 11, 14, 8, 13], 13_115),
            (1000, 256, 1, &[193, 156, 243, 103, 248, 149, 218, 250, 225, 162, 228, 195], 62_990_647),
            (
                50_000,
                20_000,
                3,
                &[12997, 12272, 102, 9841, 15920, 14776, 5506, 18371, 19195, 17618, 16032, 10202],
                12_490_405_849_654,
            ),
            (
                30_000,
                12_000,
                (1 << 40) + 5,
                &[815, 2655, 5094, 3957, 4069, 3726, 1634, 11874, 655, 2055, 4775, 5571],
                2_695_914_558_524,
            ),
            (123_457, 256, 0, &[223, 6, 136, 234, 49, 27, 173, 76, 209, 28, 163, 52], 973_153_950_548),
        ];
        for (d_total, d, seed, head, sum) in cases {
            let idx = generate_index(d_total, d, seed);
            assert_eq!(idx.len(), d_total);
            assert_eq!(&idx[..head.len()], head, "D={d_total} d={d} seed={seed}");
            assert_eq!(checksum(&idx), sum, "D={d_total} d={d} seed={seed}");
        }
    }

    /// `g = np.random.default_rng(5)`: `g.choice(20000, 1000, replace=False)[:5]`, then
    /// `g.choice(100, 7, replace=False)`.
    #[test]
    fn choice_without_replacement_equals_numpys() {
        let mut g = Pcg64::new(5);
        assert_eq!(&g.choice_without_replacement(20_000, 1000)[..5], &[10974, 12442, 12953, 16040, 7964]);
        assert_eq!(g.choice_without_replacement(100, 7), [23, 70, 8, 69, 0, 15, 10]);
    }
}
