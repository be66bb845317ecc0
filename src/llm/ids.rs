//! Identifiers for responses and tool calls (`chatcmpl-…`, `call_…`). Unique per process run
//! and unpredictable enough for logs; not a security token.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 24 characters of `[A-Za-z0-9]`.
pub fn random_suffix() -> String {
    let mut out = String::with_capacity(24);
    push_random(&mut out, 24);
    out
}

/// Appends `len` characters of `[A-Za-z0-9]`, 12 from each hash of the process-wide counter.
fn push_random(out: &mut String, len: usize) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut left = len;
    let mut part = 0u64;
    while left > 0 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(part);
        let mut x = h.finish();
        for _ in 0..left.min(12) {
            out.push(ALPHABET[(x % 62) as usize] as char);
            x /= 62;
        }
        left = left.saturating_sub(12);
        part += 1;
    }
}

/// 24 characters that sort by creation time: 7 of milliseconds since 1970 in base 62 (ASCII
/// order, good until 2081), then 17 random. Completion ids are the usage ledger's keys; ids that
/// arrive in order go to the end of its index instead of to a random page each, which made every
/// batch of requests rewrite a page per request.
pub fn time_ordered_suffix() -> String {
    const SORTED: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut time = [b'0'; 7];
    let mut x = ms;
    for c in time.iter_mut().rev() {
        *c = SORTED[(x % 62) as usize];
        x /= 62;
    }
    let mut out = String::with_capacity(24);
    out.extend(time.iter().map(|&c| c as char));
    push_random(&mut out, 17);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_ordered_suffixes_sort_by_creation_time() {
        let a = super::time_ordered_suffix();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::time_ordered_suffix();
        assert!(a < b, "{a} then {b}");
        assert_eq!(b.len(), 24);
        assert!(b.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a[7..], b[7..]);
    }

    #[test]
    fn suffixes_differ_and_are_alphanumeric() {
        let a = super::random_suffix();
        let b = super::random_suffix();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
