//! Deterministic names and label values derived from resource names.
//!
//! Kubernetes caps Job names and label values at 63 characters and object names at
//! 253. A derived name that would not fit keeps a readable prefix and ends in a hash
//! of the whole, so two long names never collide by truncation.

/// A stable 64-bit FNV-1a hash: fixed by definition, unlike `std`'s hasher, so names
/// and fingerprints stay the same across Tally versions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `base + suffix`, shortened to `max` characters by replacing the end of `base`
/// with a hash of it when it does not fit.
pub fn bounded(base: &str, suffix: &str, max: usize) -> String {
    if base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let hash = format!("-{:08x}", fnv1a(base.as_bytes()) as u32);
    let keep = max.saturating_sub(suffix.len() + hash.len());
    let prefix: String = base.chars().take(keep).collect();
    format!("{}{hash}{suffix}", prefix.trim_end_matches(['-', '.']))
}

/// A label value naming an object (at most 63 characters).
pub fn label_value(name: &str) -> String {
    bounded(name, "", 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_and_long_ones_stay_distinct() {
        assert_eq!(bounded("checkout", "-2", 63), "checkout-2");
        let a = bounded(&format!("{}a", "x".repeat(70)), "-2", 63);
        let b = bounded(&format!("{}b", "x".repeat(70)), "-2", 63);
        assert_eq!(a.len(), 63);
        assert!(a.ends_with("-2"));
        assert_ne!(a, b);
        assert_eq!(label_value("checkout"), "checkout");
        assert_eq!(label_value(&"y".repeat(100)).len(), 63);
    }

    #[test]
    fn the_hash_is_fnv1a() {
        // Reference values of the 64-bit FNV-1a function.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
