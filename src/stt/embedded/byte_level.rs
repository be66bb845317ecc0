//! Whisper's tokens back to text. CTranslate2 returns token strings from the model's
//! `vocabulary.txt`, spelt in GPT-2's byte-level alphabet (each byte one printable character);
//! this is the `ByteLevel` decoder of Hugging Face's `tokenizers`, which Whisper's `tokenizer.json`
//! names, without the rest of that crate.

/// The text of `tokens`: each token's characters mapped back to bytes (a token with a character
/// outside the alphabet, such as an added special token, is taken as its own UTF-8), joined, and
/// read as UTF-8 with invalid sequences replaced.
pub fn decode(tokens: &[String]) -> String {
    let mut bytes = Vec::new();
    for token in tokens {
        let start = bytes.len();
        for c in token.chars() {
            match byte_of(c) {
                Some(b) => bytes.push(b),
                None => {
                    bytes.truncate(start);
                    bytes.extend_from_slice(token.as_bytes());
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// GPT-2's `bytes_to_unicode` reversed: printable bytes stand for themselves; the other 68
/// (0x00-0x20, 0x7F-0xA0, 0xAD), in order, are spelt U+0100 to U+0143.
fn byte_of(c: char) -> Option<u8> {
    match u32::from(c) {
        c @ (0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF) => Some(c as u8),
        c @ 0x100..=0x120 => Some((c - 0x100) as u8),
        c @ 0x121..=0x142 => Some((c - 0x121 + 0x7F) as u8),
        0x143 => Some(0xAD),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(tokens: &[&str]) -> Vec<String> {
        tokens.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_space_is_spelt_g_dot_and_multibyte_characters_span_tokens() {
        // " Book a café." as Whisper's BPE spells it: Ġ is the space byte, Ã© the two bytes of é.
        assert_eq!(decode(&strings(&["ĠBook", "Ġa", "Ġcaf", "Ã©", "."])), " Book a café.");
        // The two bytes of é in separate tokens still join into one character.
        assert_eq!(decode(&strings(&["Ã", "©"])), "é");
        assert_eq!(decode(&strings(&["Ċ", "ĉ", "č"])), "\n\t\r");
    }

    #[test]
    fn every_byte_has_exactly_one_character_and_others_pass_through() {
        let mut seen = [false; 256];
        for c in (0..0x200).filter_map(char::from_u32) {
            if let Some(b) = byte_of(c) {
                assert!(!seen[b as usize], "byte {b:#x} spelt twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "every byte has a character");
        assert_eq!(decode(&strings(&["<|endoftext|>", "Ġ→"])), "<|endoftext|>Ġ→", "outside the alphabet: the token as it is");
        assert_eq!(decode(&strings(&["Ã"])), "\u{FFFD}", "a cut UTF-8 sequence is replaced");
    }
}
