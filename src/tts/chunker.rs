//! Cuts an LLM token stream into speakable pieces, so text-to-speech starts after the first clause
//! instead of the whole answer.
//!
//! # Rules
//! - A chunk ends after a sentence end (`.` `!` `?` `…`, optionally followed by closing quotes or
//!   brackets) that is followed by whitespace; `。` `！` `？` end a sentence without whitespace. A
//!   `.` followed by anything else (`3.5`, `ana@example.com`, `$12.99`) is not an end, and neither is
//!   the `.` of a title or abbreviation (`Mr.` `Mrs.` `Ms.` `Dr.` `St.` `Prof.` `e.g.` `i.e.` `vs.`);
//!   `etc.` `a.m.` `p.m.` end a sentence only when the next word starts with a capital letter.
//! - A newline ends a chunk.
//! - In the first chunk of a response only, a clause boundary (`,` `;` `:` followed by whitespace, or
//!   `—`) ends it too once the chunk holds at least [`CLAUSE_CHARS_MIN`] characters and
//!   [`CLAUSE_WORDS_MIN`] words, so the first audio starts early. `1,000` and `7:30` have no
//!   whitespace after the mark and are never cut.
//! - The first chunk of a response also ends at a word boundary (whitespace, then a word) once it
//!   holds [`FIRST_CHUNK_WORDS`] words, unless its last word leans on the next one (an article, a
//!   preposition, a conjunction, a possessive: [`LEANING_WORDS`]); then at the next boundary. Speech
//!   starts after a few words instead of a whole first sentence: text-to-speech takes about as long
//!   as the text is (Piper here: 35 ms for one word, 240 ms for eighteen), and the model writes a
//!   sentence at a few milliseconds a token before that.
//! - A chunk longer than [`CHUNK_CHARS_MAX`] characters is cut at its last whitespace (or, one word
//!   longer than that, after [`CHUNK_CHARS_MAX`] characters).
//!
//! Whitespace after a cut belongs to the chunk before it, so a cut waits for the next non-whitespace
//! character (and a `.` at the end of the buffer waits to see whether `3.` becomes `3.5`).
//!
//! # Invariants
//! Every decision depends only on the text, never on how it was split into deltas, so the chunks are
//! the same for any split; the chunks plus [`Chunker::finish`] concatenate to the input exactly
//! (unless the input is whitespace only: then there are no chunks); no chunk is whitespace only.

/// Chunk length above which a cut is forced.
pub const CHUNK_CHARS_MAX: usize = 250;
/// A clause cut in the first chunk needs at least this many characters (trimmed)...
pub const CLAUSE_CHARS_MIN: usize = 12;
/// ...and this many words.
pub const CLAUSE_WORDS_MIN: usize = 3;

/// Words after which the first chunk may end (see the module doc).
pub const FIRST_CHUNK_WORDS: usize = 4;
/// Words that lean on the next one: the first chunk is not cut after them.
pub const LEANING_WORDS: [&str; 22] = [
    "a", "an", "the", "to", "of", "for", "at", "in", "on", "by", "with", "from", "and", "or", "but", "my", "your", "our", "their", "his",
    "her", "its",
];

/// Never end a sentence (lowercase, with their dots).
const ABBREVIATIONS: [&str; 9] = ["mr.", "mrs.", "ms.", "dr.", "st.", "prof.", "e.g.", "i.e.", "vs."];
/// End a sentence only before a capital letter.
const ABBREVIATIONS_FINAL: [&str; 3] = ["etc.", "a.m.", "p.m."];
const CLOSERS: [char; 8] = ['"', '\'', '”', '’', ')', ']', '»', '}'];
const OPENERS: [char; 7] = ['"', '\'', '“', '‘', '(', '[', '«'];

/// What the scan decided at one position.
enum Decision {
    /// Cut before this char index.
    Cut(usize),
    NotCut,
    /// The text so far does not decide it.
    NeedMore,
}

/// Cuts a token stream into chunks. See the module doc.
#[derive(Debug, Default)]
pub struct Chunker {
    /// Text not yet emitted.
    pending: Vec<char>,
    /// Chars of `pending` before this index are decided as not being cut points.
    scan: usize,
    /// A chunk was emitted in this response.
    emitted: bool,
}

impl Chunker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a delta; appends every chunk it completes to `out`.
    pub fn push(&mut self, delta: &str, out: &mut Vec<String>) {
        self.pending.extend(delta.chars());
        while let Some(end) = self.next_cut() {
            let chunk: String = self.pending.drain(..end).collect();
            self.scan = 0;
            self.emitted = true;
            out.push(chunk);
        }
    }

    /// The rest of the text, if it holds any non-whitespace; the chunker starts a new response.
    pub fn finish(&mut self) -> Option<String> {
        let rest: String = self.pending.drain(..).collect();
        self.scan = 0;
        self.emitted = false;
        (!rest.trim().is_empty()).then_some(rest)
    }

    fn next_cut(&mut self) -> Option<usize> {
        while self.scan < self.pending.len() {
            let i = self.scan;
            let mut decision = self.natural_cut(i);
            if matches!(decision, Decision::NotCut) && i >= CHUNK_CHARS_MAX {
                decision = self.forced_cut(i);
            }
            match decision {
                Decision::Cut(end) => return Some(end),
                Decision::NeedMore => return None,
                Decision::NotCut => self.scan += 1,
            }
        }
        None
    }

    fn natural_cut(&self, i: usize) -> Decision {
        let p = &self.pending;
        match p[i] {
            '\n' if p[..i].iter().any(|c| !c.is_whitespace()) => self.after_whitespace(i + 1),
            '.' | '!' | '?' | '…' => {
                let mut j = i + 1;
                while j < p.len() && CLOSERS.contains(&p[j]) {
                    j += 1;
                }
                if j == p.len() {
                    return Decision::NeedMore;
                }
                if !p[j].is_whitespace() {
                    return Decision::NotCut;
                }
                if p[i] == '.' {
                    let word = self.word_ending_at(i);
                    if ABBREVIATIONS.contains(&word.as_str()) {
                        return Decision::NotCut;
                    }
                    if ABBREVIATIONS_FINAL.contains(&word.as_str()) {
                        return match self.after_whitespace(j) {
                            Decision::Cut(k) if p[k].is_uppercase() => Decision::Cut(k),
                            Decision::Cut(_) => Decision::NotCut,
                            other => other,
                        };
                    }
                }
                self.after_whitespace(j)
            }
            '。' | '！' | '？' => self.after_whitespace(i + 1),
            ',' | ';' | ':' if !self.emitted => match p.get(i + 1) {
                None => Decision::NeedMore,
                Some(c) if c.is_whitespace() && self.long_enough_for_clause(i) => self.after_whitespace(i + 1),
                Some(_) => Decision::NotCut,
            },
            '—' if !self.emitted && self.long_enough_for_clause(i) => self.after_whitespace(i + 1),
            c if c.is_whitespace() && !self.emitted && i > 0 && !p[i - 1].is_whitespace() && self.first_chunk_long_enough(i) => {
                self.after_whitespace(i)
            }
            _ => Decision::NotCut,
        }
    }

    /// The chunk has gone past [`CHUNK_CHARS_MAX`] at `i` without a cut.
    fn forced_cut(&self, i: usize) -> Decision {
        let p = &self.pending;
        let Some(first_word) = p[..=i].iter().position(|c| !c.is_whitespace()) else {
            return Decision::NotCut;
        };
        match (first_word..=i).rev().find(|&k| p[k].is_whitespace()) {
            Some(k) => self.after_whitespace(k),
            None => Decision::Cut(i),
        }
    }

    /// Cut after the whitespace run starting at `j`, once a non-whitespace char follows it.
    fn after_whitespace(&self, j: usize) -> Decision {
        match self.pending[j..].iter().position(|c| !c.is_whitespace()) {
            Some(n) => Decision::Cut(j + n),
            None => Decision::NeedMore,
        }
    }

    /// The lowercased word that ends at `i` (inclusive), without opening quotes or brackets.
    fn word_ending_at(&self, i: usize) -> String {
        let start = self.pending[..i].iter().rposition(|c| c.is_whitespace()).map_or(0, |k| k + 1);
        let word: String = self.pending[start..=i].iter().collect();
        word.trim_start_matches(OPENERS).to_lowercase()
    }

    /// The words before the whitespace at `i` are [`FIRST_CHUNK_WORDS`] or more, and the last one
    /// does not lean on the next.
    fn first_chunk_long_enough(&self, i: usize) -> bool {
        let text: String = self.pending[..i].iter().collect();
        let last = self.word_ending_at(i - 1);
        let last = last.trim_end_matches(|c: char| !c.is_alphanumeric());
        text.split_whitespace().count() >= FIRST_CHUNK_WORDS && !LEANING_WORDS.contains(&last)
    }

    fn long_enough_for_clause(&self, i: usize) -> bool {
        let text: String = self.pending[..=i].iter().collect();
        text.trim().chars().count() >= CLAUSE_CHARS_MIN && text.split_whitespace().count() >= CLAUSE_WORDS_MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Prng;

    /// Chunks of `deltas`, then what `finish` returns.
    fn chunk_deltas<'a>(deltas: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Option<String>) {
        let mut chunker = Chunker::new();
        let mut out = Vec::new();
        for delta in deltas {
            chunker.push(delta, &mut out);
        }
        (out, chunker.finish())
    }

    /// Every chunk, `finish` included, for the text pushed as one delta.
    fn chunks(text: &str) -> Vec<String> {
        let (mut out, rest) = chunk_deltas([text]);
        out.extend(rest);
        out
    }

    #[test]
    fn the_booking_example() {
        assert_eq!(
            chunks("Sure, your table for 4 is booked at 7:30 p.m. on Friday. Anything else?"),
            ["Sure, your table for 4 ", "is booked at 7:30 p.m. on Friday. ", "Anything else?"]
        );
        assert_eq!(
            chunks("Of course, Ana, your table for 4 is booked at 7:30 p.m. on Friday. Anything else, or shall I hang up? Bye."),
            ["Of course, Ana, ", "your table for 4 is booked at 7:30 p.m. on Friday. ", "Anything else, or shall I hang up? ", "Bye."]
        );
        assert_eq!(chunks("Yes. Your table for four is booked."), ["Yes. ", "Your table for four is booked."]);
    }

    #[test]
    fn sentence_ends_cut_and_keep_their_whitespace() {
        assert_eq!(chunks("Hello there. How are you?  Fine!\tGood… Yes"), ["Hello there. ", "How are you?  ", "Fine!\t", "Good… ", "Yes"]);
        assert_eq!(chunks("He said \"stop.\" Then he left."), ["He said \"stop.\" ", "Then he left."]);
        assert_eq!(chunks("Wait... what?! No."), ["Wait... ", "what?! ", "No."]);
        assert_eq!(chunks("好的。请稍等。"), ["好的。", "请稍等。"]);
    }

    #[test]
    fn a_sentence_end_at_the_end_of_the_buffer_waits() {
        let mut chunker = Chunker::new();
        let mut out = Vec::new();
        chunker.push("It costs 3.", &mut out);
        assert!(out.is_empty());
        chunker.push("5 dollars. ", &mut out);
        assert!(out.is_empty(), "the whitespace run may go on: {out:?}");
        chunker.push("Okay", &mut out);
        assert_eq!(out, ["It costs 3.5 dollars. "]);
        assert_eq!(chunker.finish().as_deref(), Some("Okay"));
        assert_eq!(chunker.finish(), None);
    }

    #[test]
    fn numbers_are_never_cut() {
        assert_eq!(
            chunks("Total, taxes included: $12.99 for 1,000 units at 3.5 percent. Thanks."),
            ["Total, taxes included: ", "$12.99 for 1,000 units at 3.5 percent. ", "Thanks."]
        );
        // After the first chunk, only sentence ends cut.
        assert_eq!(
            chunks("Okay. Pi is roughly 3.14159 and e is 2.718 as of 10:45 today."),
            ["Okay. ", "Pi is roughly 3.14159 and e is 2.718 as of 10:45 today."]
        );
        assert_eq!(chunks("Pi is 3.14159 and e is 2.718."), ["Pi is 3.14159 and e ", "is 2.718."]);
    }

    #[test]
    fn abbreviations_are_not_sentence_ends() {
        assert_eq!(
            chunks("Ok. I booked Dr. Smith and Mrs. Jones on Main St. near the park. Done."),
            ["Ok. ", "I booked Dr. Smith and Mrs. Jones on Main St. near the park. ", "Done."]
        );
        assert_eq!(
            chunks("Bring fruit, e.g. Apples, i.e. Red ones vs. Green ones. Ok."),
            ["Bring fruit, e.g. Apples, ", "i.e. Red ones vs. Green ones. ", "Ok."]
        );
        // etc., a.m. and p.m. end a sentence before a capital letter only.
        assert_eq!(chunks("Ok. See you at 9 a.m. tomorrow. Bye."), ["Ok. ", "See you at 9 a.m. tomorrow. ", "Bye."]);
        assert_eq!(chunks("At 9 a.m. Bye."), ["At 9 a.m. ", "Bye."]);
        assert_eq!(chunks("Pens, paper etc. Are in stock."), ["Pens, paper etc. ", "Are in stock."]);
        assert_eq!(chunks("(Mr. Lee) agreed."), ["(Mr. Lee) agreed."]);
    }

    #[test]
    fn emails_and_urls_are_not_cut() {
        assert_eq!(
            chunks("Ok. I sent it to ana@example.com and https://example.com/a?b=c. Check it."),
            ["Ok. ", "I sent it to ana@example.com and https://example.com/a?b=c. ", "Check it."]
        );
    }

    #[test]
    fn newlines_are_boundaries() {
        assert_eq!(chunks("First item\n\nSecond item\nThird"), ["First item\n\n", "Second item\n", "Third"]);
        assert_eq!(chunks("\n\nLeading newlines stay"), ["\n\nLeading newlines stay"]);
    }

    #[test]
    fn clause_cuts_only_in_the_first_chunk_and_only_when_long_enough() {
        // "Sure," is too short; "Sure, fine then," is long enough.
        assert_eq!(chunks("Sure, fine then, and then more, and more."), ["Sure, fine then, ", "and then more, and more."]);
        assert_eq!(chunks("Okay; moved: at noon, then lunch."), ["Okay; moved: at noon, ", "then lunch."]);
        assert_eq!(chunks("One moment please—let me check that."), ["One moment please—", "let me check that."]);
        assert_eq!(chunks("Yes, ok. Then, after lunch, we go."), ["Yes, ok. ", "Then, after lunch, we go."]);
        // A new response after finish() gets a clause cut again.
        let mut chunker = Chunker::new();
        let mut out = Vec::new();
        chunker.push("Hello there friend, how are you", &mut out);
        assert_eq!(chunker.finish().as_deref(), Some("how are you"));
        chunker.push("Good to see, yes", &mut out);
        assert_eq!(out, ["Hello there friend, ", "Good to see, "]);
    }

    #[test]
    fn the_first_chunk_ends_after_four_words_but_not_after_a_word_that_leans_on_the_next() {
        assert_eq!(chunks("I am happy to help you today."), ["I am happy to help ", "you today."]);
        assert_eq!(chunks("I can book a table tonight."), ["I can book a table ", "tonight."]);
        assert_eq!(chunks("Your table for four is booked."), ["Your table for four ", "is booked."]);
        assert_eq!(chunks("Booked it for the seven o'clock slot."), ["Booked it for the seven ", "o'clock slot."]);
        // Only the first chunk: the second runs to its sentence end.
        assert_eq!(
            chunks("I am happy to help you today. Is there anything else I can do?"),
            ["I am happy to help ", "you today. ", "Is there anything else I can do?"]
        );
        // A word split over deltas is never cut inside: the cut waits for the next word to start.
        let mut chunker = Chunker::new();
        let mut out = Vec::new();
        for delta in ["I am hap", "py", " ", "so", " ", " "] {
            chunker.push(delta, &mut out);
        }
        assert!(out.is_empty(), "four words, but the whitespace may go on: {out:?}");
        chunker.push("t", &mut out);
        assert_eq!(out, ["I am happy so  "]);
        chunker.push("o he", &mut out);
        assert_eq!(chunker.finish().as_deref(), Some("to he"));
    }

    #[test]
    fn long_text_is_cut_at_the_last_whitespace() {
        let text = format!("Ok. {}", "word ".repeat(120));
        let out = chunks(&text);
        assert_eq!(out.concat(), text);
        assert_eq!(out[1].chars().count(), 250);
        assert!(out[1].ends_with("word "));
        let long_word = "x".repeat(600);
        let out = chunks(&long_word);
        assert_eq!(out.iter().map(|c| c.len()).collect::<Vec<_>>(), [250, 250, 100]);
    }

    #[test]
    fn whitespace_only_gives_nothing() {
        assert!(chunks("").is_empty());
        assert!(chunks("  \n\t ").is_empty());
        assert_eq!(chunks("Done. \n "), ["Done. \n "]);
    }

    /// Random text of words, numbers, abbreviations, addresses, punctuation and whitespace.
    fn random_text(rng: &mut Prng) -> String {
        const PIECES: [&str; 40] = [
            "Sure",
            "your",
            "table",
            "for",
            "4",
            "is",
            "booked",
            "at",
            "7:30",
            "p.m.",
            "a.m.",
            "on",
            "Friday",
            "Mr.",
            "Dr.",
            "e.g.",
            "etc.",
            "3.5",
            "1,000",
            "$12.99",
            "ana@example.com",
            "https://x.io/a?b=c",
            "Anything",
            "else",
            "I",
            "am",
            "3.",
            "no",
            "Wednesday",
            "好的。",
            "“quoted.”",
            "(aside)",
            "o'clock",
            "long",
            "rather",
            "yes",
            "okay",
            "Tuesday",
            "A",
            "B",
        ];
        const MARKS: [&str; 14] = [".", ",", "!", "?", "…", ";", ":", "—", "...", "?!", "\"", ")", "", ""];
        const SPACES: [&str; 8] = [" ", " ", " ", "  ", "\n", "\n\n", "\t", ""];
        let mut text = String::new();
        if rng.below(5) == 0 {
            text.push_str(SPACES[rng.below(SPACES.len())]);
        }
        for _ in 0..rng.below(120) {
            if rng.below(40) == 0 {
                text.push_str(&"y".repeat(rng.below(300)));
            } else {
                text.push_str(PIECES[rng.below(PIECES.len())]);
            }
            if rng.below(4) == 0 {
                text.push_str(MARKS[rng.below(MARKS.len())]);
            }
            text.push_str(SPACES[rng.below(SPACES.len())]);
        }
        text
    }

    /// Splits `text` at random char boundaries (empty deltas included).
    fn random_split<'a>(text: &'a str, rng: &mut Prng) -> Vec<&'a str> {
        let mut deltas = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let chars = rng.below(10);
            let at = rest.char_indices().nth(chars).map_or(rest.len(), |(i, _)| i);
            let (delta, tail) = rest.split_at(at);
            deltas.push(delta);
            rest = tail;
        }
        deltas
    }

    #[test]
    fn property_chunks_concatenate_to_the_input_and_ignore_delta_splits() {
        let mut rng = Prng(0x1234_5678_9abc_def1);
        let mut cuts_seen = 0;
        for case in 0..3_000 {
            let text = random_text(&mut rng);
            let whole = chunks(&text);
            cuts_seen += whole.len().saturating_sub(1);
            if text.trim().is_empty() {
                assert!(whole.is_empty(), "case {case}: {whole:?}");
            } else {
                assert_eq!(whole.concat(), text, "case {case}");
            }
            for chunk in &whole {
                assert!(!chunk.trim().is_empty(), "case {case}: whitespace-only chunk in {whole:?}");
                assert!(chunk.trim_end().chars().count() <= CHUNK_CHARS_MAX + 1, "case {case}: chunk too long: {chunk:?}");
            }
            for _ in 0..3 {
                let deltas = random_split(&text, &mut rng);
                let (mut split, rest) = chunk_deltas(deltas.iter().copied());
                split.extend(rest);
                assert_eq!(split, whole, "case {case}: deltas {deltas:?}");
            }
            // One char at a time, the hardest split.
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let (mut single, rest) = chunk_deltas(chars.iter().map(String::as_str));
            single.extend(rest);
            assert_eq!(single, whole, "case {case}: one char at a time");
        }
        assert!(cuts_seen > 10_000, "the generator should make many cuts, made {cuts_seen}");
    }
}
