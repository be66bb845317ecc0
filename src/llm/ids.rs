//! Identifiers for responses and tool calls (`chatcmpl-…`, `call_…`). Unique per process run
//! and unpredictable enough for logs; not a security token.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 24 characters of `[A-Za-z0-9]`.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(24);
    for half in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(half);
        let mut x = h.finish();
        for _ in 0..12 {
            out.push(ALPHABET[(x % 62) as usize] as char);
            x /= 62;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn suffixes_differ_and_are_alphanumeric() {
        let a = super::random_suffix();
        let b = super::random_suffix();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
