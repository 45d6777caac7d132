//! 64-bit hashing shared by the payment decision and the deterministic trace ids.
//!
//! Both need "random-looking but reproducible" numbers from small integer inputs
//! (consecutive order ids, small seeds). The splitmix64 finalizer is a well-studied
//! bijective mixer whose outputs pass BigCrush even for consecutive inputs; two rounds
//! keyed by seed and stream make the outputs of different seeds and different uses
//! (outcome, reason, trace id) independent of each other.

/// The golden-ratio increment of splitmix64: spreads consecutive inputs over all 64 bits.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Independent uses of [`mix`]; each gets its own key so their outputs do not correlate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Outcome = 1,
    Reason = 2,
    TraceHigh = 3,
    TraceLow = 4,
    Span = 5,
}

/// The splitmix64 output function (Stafford's "mix13").
pub(crate) fn fmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A well-mixed 64-bit hash of `value` under `seed`, for one `stream` of uses.
pub(crate) fn mix(stream: Stream, seed: u64, value: u64) -> u64 {
    let key = fmix(seed ^ fmix(stream as u64));
    // The first round is splitmix64's `value`-th output from state `key`; the second
    // round, keyed again, removes the shift relation between streams of nearby keys.
    fmix(fmix(key.wrapping_add(value.wrapping_mul(GAMMA))) ^ key)
}

/// Maps a hash to a uniform `f64` in `[0, 1)` using its top 53 bits (the mantissa width),
/// so every representable outcome is equally likely and 1.0 is never produced.
pub(crate) fn unit_interval(hash: u64) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    (hash >> 11) as f64 * SCALE
}
