//! Limits that must be positive are read as `NonZero*`, so no user of the settings guards them
//! again. Where the documentation promises that values below 1 count as 1, they do so here.

use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Deserializer};

/// A count for which `0` has always meant `1`.
pub(crate) fn u32_zero_as_one<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    Ok(NonZeroU32::new(u32::deserialize(d)?).unwrap_or(NonZeroU32::MIN))
}

/// An interval for which `0` has always meant `1`.
pub(crate) fn u64_zero_as_one<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU64, D::Error> {
    Ok(NonZeroU64::new(u64::deserialize(d)?).unwrap_or(NonZeroU64::MIN))
}

/// A built-in default that is not zero (checked when compiled).
pub(crate) const fn nonzero_u32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a built-in limit is zero"),
    }
}

/// A built-in default that is not zero (checked when compiled).
pub(crate) const fn nonzero_u64(n: u64) -> NonZeroU64 {
    match NonZeroU64::new(n) {
        Some(n) => n,
        None => panic!("a built-in limit is zero"),
    }
}
