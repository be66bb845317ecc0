//! Word error rate: how far a recognised transcript is from a reference, as word-level edit distance
//! (substitutions + deletions + insertions) over the reference's word count, after both texts are
//! normalised the same way so that spelling choices of an engine do not count as errors.
//!
//! # Normalisation (applied to both sides)
//! - Lowercase; `@` reads "at"; a `.` between letters reads "dot" (`example.com`); apostrophes are
//!   dropped (`that's` = `thats`); other punctuation, hyphens and `:`/`.` between digits separate words.
//! - Numbers become single digits: number words up to the tens are turned into digits first
//!   (`forty five` = `45`, `fourteenth` = `14th` = `14`), ordinal suffixes are dropped, "oh" between
//!   digits is 0, "o'clock" is `:00`, and then every run of digits is split into one word per digit.
//!   So `4 7 2 9 1` = `47291` = `four seven two nine one`, `3:45` = `three forty five`,
//!   `555-0142` = `5 5 5, 0 1 4 2`. ("Forty seven thousand…" is not handled: no fixture needs it.)
//! - Two or more single letters in a row are one word: `A N A` = `ANA`.

/// Errors and reference length of one comparison; add them up over a set before dividing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WerCount {
    /// Substitutions + deletions + insertions.
    pub errors: usize,
    /// Words in the normalised reference.
    pub reference_words: usize,
}

impl WerCount {
    /// errors / reference words; 0 for an empty reference matched by an empty hypothesis, 1 per
    /// inserted word when the reference is empty.
    pub fn rate(&self) -> f64 {
        match self.reference_words {
            0 => self.errors as f64,
            n => self.errors as f64 / n as f64,
        }
    }
}

impl std::ops::Add for WerCount {
    type Output = WerCount;
    fn add(self, other: WerCount) -> WerCount {
        WerCount { errors: self.errors + other.errors, reference_words: self.reference_words + other.reference_words }
    }
}

impl std::iter::Sum for WerCount {
    fn sum<I: Iterator<Item = WerCount>>(iter: I) -> WerCount {
        iter.fold(WerCount::default(), |a, b| a + b)
    }
}

/// Compares a hypothesis with a reference after [`normalise`]-ing both.
pub fn wer(reference: &str, hypothesis: &str) -> WerCount {
    let reference = normalise(reference);
    let hypothesis = normalise(hypothesis);
    WerCount { errors: edit_distance(&reference, &hypothesis), reference_words: reference.len() }
}

/// Levenshtein distance between two word sequences (each edit costs 1).
pub fn edit_distance<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut current = vec![0; hypothesis.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        current[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(r != h);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[hypothesis.len()]
}

/// The words of `text` in the normal form described in the module doc.
pub fn normalise(text: &str) -> Vec<String> {
    let words = split_words(text);
    let words = numbers_to_digits(words);
    join_spelled_letters(words)
}

/// Lowercase, punctuation out, `@` and `.`-between-letters read aloud, digit runs kept apart from
/// letters after them only for ordinals (handled later).
fn split_words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut out = String::with_capacity(chars.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let before = i.checked_sub(1).map(|p| chars[p]);
        let after = chars.get(i + 1).copied();
        match c {
            '\'' | '\u{2019}' => {}
            '@' => out.push_str(" at "),
            '.' if before.is_some_and(char::is_alphabetic) && after.is_some_and(char::is_alphabetic) => out.push_str(" dot "),
            c if c.is_alphanumeric() => out.push(c),
            _ => out.push(' '),
        }
    }
    out.split_whitespace().map(str::to_owned).collect()
}

const UNITS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const ORDINAL_UNITS: [&str; 20] = [
    "zeroth",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
];
const TENS: [&str; 8] = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
const ORDINAL_TENS: [&str; 8] = ["twentieth", "thirtieth", "fortieth", "fiftieth", "sixtieth", "seventieth", "eightieth", "ninetieth"];

/// The value of a number word below 20 (cardinal or ordinal).
fn unit_value(word: &str) -> Option<u32> {
    UNITS.iter().chain(ORDINAL_UNITS.iter()).position(|w| *w == word).map(|i| (i % 20) as u32)
}

/// The value of a tens word (cardinal or ordinal).
fn tens_value(word: &str) -> Option<u32> {
    TENS.iter().chain(ORDINAL_TENS.iter()).position(|w| *w == word).map(|i| 20 + 10 * (i % 8) as u32)
}

/// `14th` → `14`; other words unchanged.
fn strip_ordinal_suffix(word: &str) -> &str {
    for suffix in ["st", "nd", "rd", "th"] {
        if let Some(number) = word.strip_suffix(suffix) {
            if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) {
                return number;
            }
        }
    }
    word
}

fn is_digits(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_digit())
}

/// Number words to digits, then every digit run to one word per digit.
fn numbers_to_digits(words: Vec<String>) -> Vec<String> {
    // Pass 1: values. "forty five" is one number; "seven thirty" two.
    let mut numeric: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        if let Some(tens) = tens_value(word) {
            match words.get(i + 1).and_then(|next| unit_value(next)).filter(|u| (1..10).contains(u)) {
                Some(unit) if TENS.contains(&word) => {
                    numeric.push((tens + unit).to_string());
                    i += 2;
                }
                _ => {
                    numeric.push(tens.to_string());
                    i += 1;
                }
            }
            continue;
        }
        if let Some(unit) = unit_value(word) {
            numeric.push(unit.to_string());
        } else if word == "oclock" {
            numeric.push("00".into());
        } else {
            numeric.push(strip_ordinal_suffix(word).to_owned());
        }
        i += 1;
    }
    // Pass 2: "oh" between digits is zero; digit runs split.
    let mut out = Vec::with_capacity(numeric.len());
    for (i, word) in numeric.iter().enumerate() {
        let beside_digit = |j: Option<usize>| j.and_then(|j| numeric.get(j)).is_some_and(|w| is_digits(w));
        if word == "oh" && (beside_digit(i.checked_sub(1)) || beside_digit(Some(i + 1))) {
            out.push("0".to_owned());
        } else if is_digits(word) {
            out.extend(word.chars().map(String::from));
        } else {
            out.push(word.clone());
        }
    }
    out
}

/// Runs of two or more single letters become one word.
fn join_spelled_letters(words: Vec<String>) -> Vec<String> {
    let single_letter = |w: &str| w.chars().count() == 1 && w.chars().all(char::is_alphabetic);
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut run: Vec<String> = Vec::new();
    let flush = |run: &mut Vec<String>, out: &mut Vec<String>| {
        if run.len() >= 2 {
            out.push(run.concat());
        } else {
            out.append(run);
        }
        run.clear();
    };
    for word in words {
        if single_letter(&word) {
            run.push(word);
        } else {
            flush(&mut run, &mut out);
            out.push(word);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> String {
        normalise(text).join(" ")
    }

    #[test]
    fn edit_distance_counts_substitutions_deletions_and_insertions() {
        assert_eq!(edit_distance::<&str>(&[], &[]), 0);
        assert_eq!(edit_distance(&["a", "b", "c"], &["a", "b", "c"]), 0);
        assert_eq!(edit_distance(&["a", "b", "c"], &["a", "x", "c"]), 1);
        assert_eq!(edit_distance(&["a", "b", "c"], &["a", "c"]), 1);
        assert_eq!(edit_distance(&["a", "b", "c"], &["a", "b", "c", "d"]), 1);
        assert_eq!(edit_distance(&["a", "b"], &[]), 2);
        assert_eq!(edit_distance(&[], &["a", "b"]), 2);
        assert_eq!(edit_distance(&["kitten", "sat"], &["sitting", "sat", "down"]), 2);
    }

    #[test]
    fn case_and_punctuation_do_not_count() {
        assert_eq!(n("Where is my order? The order number is..."), "where is my order the order number is");
        assert_eq!(n("Yes, that's right, please go ahead."), "yes thats right please go ahead");
        assert_eq!(wer("I'd like to book a table.", "i'd like to book a table").errors, 0);
    }

    #[test]
    fn numbers_are_compared_digit_by_digit() {
        assert_eq!(n("The order number is 4 7 2 9 1."), "the order number is 4 7 2 9 1");
        assert_eq!(n("the order number is 47291"), "the order number is 4 7 2 9 1");
        assert_eq!(n("four seven two nine one"), "4 7 2 9 1");
        assert_eq!(n("You can call me back on 5 5 5, 0 1 4 2."), n("You can call me back on 555-0142."));
        assert_eq!(n("five five five oh one four two"), "5 5 5 0 1 4 2");
        assert_eq!(n("Friday March 14th at 3:45?"), n("Friday, March fourteenth at three forty-five?"));
        assert_eq!(n("at seven thirty"), n("at 7:30"));
        assert_eq!(n("at seven thirty"), n("at 7.30"));
        assert_eq!(n("eight o'clock"), n("8:00"));
        assert_eq!(n("for four people"), "for 4 people");
        assert_eq!(n("twenty"), "2 0");
    }

    #[test]
    fn spelled_letters_and_addresses_read_as_one() {
        assert_eq!(n("My email is A N A at example dot com."), "my email is ana at example dot com");
        assert_eq!(n("My email is ana@example.com."), "my email is ana at example dot com");
        assert_eq!(n("My email is A-N-A at example.com"), "my email is ana at example dot com");
        // A lone "a" stays a word.
        assert_eq!(n("book a table"), "book a table");
    }

    #[test]
    fn rates_add_up_over_a_set() {
        let a = wer("one two three four", "one two three");
        assert_eq!(a, WerCount { errors: 1, reference_words: 4 });
        assert_eq!(a.rate(), 0.25);
        let b = wer("hello there", "hello there");
        let total: WerCount = [a, b].into_iter().sum();
        assert_eq!(total, WerCount { errors: 1, reference_words: 6 });
        assert_eq!(wer("", "").rate(), 0.0);
        assert_eq!(wer("", "you").rate(), 1.0);
    }
}
