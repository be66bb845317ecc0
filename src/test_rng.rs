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

// Fuzzing on stable Rust: inputs generated or mutated from valid samples. Not every user of `Prng`
// mutates (the unit tests of one module, `tests/it/fuzz.rs` that includes this file by path).

/// Numbers that break parsers and the arithmetic after them: past every integer width, past `f64`,
/// negative where a count belongs, exponents.
#[allow(dead_code)]
pub const HUGE_NUMBERS: [&str; 13] = [
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967296",
    "99999999999999999999999999999999999999",
    "1e309",
    "-1e309",
    "1e-400",
    "1.7976931348623157e308",
    "-1",
    "0",
    "-0.0",
    "123456789012345678901234567890.5e300",
];

/// Byte sequences that are not UTF-8: a lone continuation byte, a cut two-byte sequence, an overlong
/// NUL, a surrogate, a code point past U+10FFFF, bytes UTF-8 never uses.
#[allow(dead_code)]
pub const INVALID_UTF8: [&[u8]; 7] = [b"\x80", b"\xc3", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\xe2\x82"];

/// Structural and escape bytes of the text formats we read (JSON, SSE, TOML).
const INTERESTING_BYTES: &[u8] = b"\0\n\r\t \"'\\{}[]:,=#.-+0123456789eE";

#[allow(dead_code)]
impl Prng {
    /// True about once in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length that is usually small and now and then large: up to `max`.
    pub fn len_up_to(&mut self, max: usize) -> usize {
        match self.below(8) {
            0 => self.below(max + 1),
            1 | 2 => self.below(max.min(256) + 1),
            _ => self.below(max.min(16) + 1),
        }
    }

    /// `input` mutated one to four times: bit flips, interesting and random bytes inserted, ranges
    /// deleted or repeated, a splice with one of `samples`, truncation, huge numbers, deep nesting,
    /// long strings, invalid UTF-8, one of `tokens` (a format's keywords and field names).
    pub fn mutate(&mut self, input: &mut Vec<u8>, samples: &[&[u8]], tokens: &[&str]) {
        for _ in 0..1 + self.below(4) {
            self.mutate_once(input, samples, tokens);
        }
    }

    fn mutate_once(&mut self, input: &mut Vec<u8>, samples: &[&[u8]], tokens: &[&str]) {
        let at = self.below(input.len() + 1);
        match self.below(13) {
            0 if !input.is_empty() => {
                let i = self.below(input.len());
                input[i] ^= 1 << self.below(8);
            }
            1 if !input.is_empty() => {
                let i = self.below(input.len());
                input[i] = if self.one_in(2) { *self.pick(INTERESTING_BYTES) } else { self.next_u64() as u8 };
            }
            2 => {
                let n = 1 + self.below(8);
                let bytes: Vec<u8> =
                    (0..n).map(|_| if self.one_in(2) { *self.pick(INTERESTING_BYTES) } else { self.next_u64() as u8 }).collect();
                input.splice(at..at, bytes);
            }
            3 if !input.is_empty() => {
                let end = (at + 1 + self.len_up_to(64)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 if !input.is_empty() => {
                // A range repeated: duplicated fields, repeated events.
                let start = self.below(input.len());
                let end = (start + 1 + self.len_up_to(64)).min(input.len());
                let piece = input[start..end].to_vec();
                for _ in 0..1 + self.len_up_to(8) {
                    input.splice(at..at, piece.iter().copied());
                }
            }
            5 if !samples.is_empty() => {
                // A splice: our head, another sample's tail.
                let other = *self.pick(samples);
                let from = self.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            6 => input.truncate(at),
            7 => {
                let n = self.pick(&HUGE_NUMBERS).as_bytes().to_vec();
                // Replace a number where there is one, else insert.
                match input.iter().skip(at).position(u8::is_ascii_digit) {
                    Some(p) => {
                        let start = at + p;
                        let end = start + input[start..].iter().take_while(|b| b.is_ascii_digit() || b"-+.eE".contains(b)).count();
                        input.splice(start..end, n);
                    }
                    None => {
                        input.splice(at..at, n);
                    }
                }
            }
            8 => {
                // Deep nesting, past serde_json's limit of 128 now and then.
                let depth = 1 + if self.one_in(4) { 100 + self.below(400) } else { self.below(40) };
                let (open, close): (&[u8], &[u8]) = match self.below(3) {
                    0 => (b"[", b"]"),
                    1 => (b"{\"a\":", b"}"),
                    _ => (b"[{\"type\":", b"}]"),
                };
                let mut nest = open.repeat(depth);
                if self.one_in(2) {
                    nest.extend(b"1");
                    nest.extend(close.repeat(depth));
                }
                input.splice(at..at, nest);
            }
            9 => {
                // A long string: up to 64 KiB, now and then 1 MiB.
                let n = if self.one_in(16) { 1 << 20 } else { self.len_up_to(64 * 1024) };
                let c = if self.one_in(2) { b'a' } else { *self.pick(INTERESTING_BYTES) };
                input.splice(at..at, std::iter::repeat_n(c, n));
            }
            10 => {
                let bad = *self.pick(&INVALID_UTF8);
                input.splice(at..at, bad.iter().copied());
            }
            11 if !tokens.is_empty() => {
                let t = self.pick(tokens).as_bytes().to_vec();
                input.splice(at..at, t);
            }
            _ => {
                // A multi-byte character, which slicing by byte offsets trips on.
                let c = *self.pick(&["é", "€", "😀", "\u{2028}", "\u{feff}"]);
                input.splice(at..at, c.bytes());
            }
        }
    }

    /// A JSON document built from `tokens` (used as keys and string values), nested up to `depth`.
    pub fn json(&mut self, tokens: &[&str], depth: usize) -> String {
        let mut out = String::new();
        self.json_into(&mut out, tokens, depth);
        out
    }

    fn json_into(&mut self, out: &mut String, tokens: &[&str], depth: usize) {
        let word = |rng: &mut Prng| if tokens.is_empty() { "x".to_string() } else { rng.pick(tokens).to_string() };
        match self.below(if depth == 0 { 5 } else { 7 }) {
            0 => out.push_str(*self.pick(&["null", "true", "false"])),
            1 => out.push_str(&(self.next_u64() as i64 >> self.below(64)).to_string()),
            2 => out.push_str(*self.pick(&HUGE_NUMBERS)),
            3 => out.push_str(&format!("{:.3}", (self.next_u64() % 100_000) as f64 / 7.0)),
            4 => out.push_str(&serde_json_string(&word(self))),
            5 => {
                out.push('[');
                for i in 0..self.len_up_to(6) {
                    if i > 0 {
                        out.push(',');
                    }
                    self.json_into(out, tokens, depth - 1);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..self.len_up_to(6) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json_string(&word(self)));
                    out.push(':');
                    self.json_into(out, tokens, depth - 1);
                }
                out.push('}');
            }
        }
    }
}

/// `s` as a JSON string literal (quotes and backslashes escaped; control characters as `\u00XX`).
fn serde_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
