//! A tiny deterministic random generator for property tests (xorshift64*), shared by every module's
//! tests so no test depends on a random-number crate.

pub struct Prng(pub u64);

impl Prng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// Uniform-ish in `0..bound` (`bound` > 0).
    pub fn below_u64(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// Any 16-bit sample.
    pub fn sample(&mut self) -> i16 {
        (self.next_u64() >> 48) as u16 as i16
    }

    /// A sample in `-amplitude..=amplitude`.
    pub fn uniform(&mut self, amplitude: i32) -> i16 {
        (self.below_u64(2 * amplitude as u64 + 1) as i32 - amplitude) as i16
    }
}
