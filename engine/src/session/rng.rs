//! The session's source of randomness: a seeded xoshiro128** generator.
//!
//! Randomness is a parameter like time: a `ClientSession` draws every jitter
//! from this generator, seeded by its shell, so a seed replays a run bit for
//! bit. It works on 32-bit words only (xoshiro128** seeded through
//! splitmix32), so the TypeScript client reproduces the same draws with
//! `Math.imul` and unsigned shifts, and the shared trace vectors hold both
//! clients to the same pauses.

/// xoshiro128** (Blackman and Vigna): small, fast, good enough for jitter;
/// not for secrets.
#[derive(Debug, Clone)]
pub struct SessionRng {
    state: [u32; 4],
}

impl SessionRng {
    /// A generator whose state is four splitmix32 outputs from `seed`.
    pub fn new(seed: u32) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9);
            let mut z = x;
            z = (z ^ (z >> 16)).wrapping_mul(0x85eb_ca6b);
            z = (z ^ (z >> 13)).wrapping_mul(0xc2b2_ae35);
            z ^ (z >> 16)
        };
        let mut state = [next(), next(), next(), next()];
        if state == [0; 4] {
            // The one state xoshiro cannot leave.
            state[0] = 1;
        }
        Self { state }
    }

    pub fn next_u32(&mut self) -> u32 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 9;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(11);
        result
    }

    /// A draw in `0..=max` (by remainder: its bias is at most `max / 2^32`,
    /// immaterial for jitter, and it is exact in every language).
    pub fn up_to(&mut self, max: u32) -> u32 {
        match max.checked_add(1) {
            Some(span) => self.next_u32() % span,
            None => self.next_u32(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_draws_stay_in_range() {
        let mut a = SessionRng::new(7);
        let mut b = SessionRng::new(7);
        let draws: Vec<u32> = (0..8).map(|_| a.next_u32()).collect();
        assert_eq!(draws, (0..8).map(|_| b.next_u32()).collect::<Vec<_>>());
        assert_ne!(draws, (0..8).map(|_| SessionRng::new(8).next_u32()).collect::<Vec<_>>());
        let mut rng = SessionRng::new(1);
        assert!((0..1000).all(|_| rng.up_to(10) <= 10));
        assert_eq!(rng.up_to(0), 0);
    }

    /// The first draws of seed 1 (checked against an independent
    /// implementation of the published algorithms); the TypeScript port
    /// asserts the same.
    #[test]
    fn the_draws_of_seed_one_are_fixed() {
        let mut rng = SessionRng::new(1);
        let draws: Vec<u32> = (0..4).map(|_| rng.next_u32()).collect();
        assert_eq!(draws, [2_442_144_158, 3_238_099_751, 3_819_917_871, 2_104_621_829]);
    }
}
