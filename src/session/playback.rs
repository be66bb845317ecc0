//! The agent's side of a session: a response's audio on its way to the caller, paced at real time
//! (`output_lead_ms` ahead), with the text of each chunk released as its audio starts, and what the
//! caller has heard when playback is cut. It owns the queue, the pacing clock and the timeline.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::audio::AudioFormat;
use crate::tts::WordEnd;

/// The most audio one outbound audio event carries. Once a frame is due (within `output_lead_ms` of
/// being heard), the frames right after it join it up to this much, so a caller may hold up to
/// `output_lead_ms` + this much ahead; a 20 ms engine frame per message would triple the messages
/// (and the system calls) for the same audio.
pub const OUTPUT_DELTA_MS_MAX: f64 = 60.0;

/// Audio queued ahead of playback before the session stops taking more from the TTS (backpressure).
pub const MAX_QUEUED_AUDIO_MS: f64 = 2_000.0;

/// One response's audio, queued and played.
pub struct Playback {
    pub response_id: String,
    pub item_id: String,
    /// The output format when the response started: its audio is at this format's rate.
    pub format: AudioFormat,
    queue: VecDeque<Out>,
    queued_ms: f64,
    started: Option<Instant>,
    sent_ms: f64,
    /// Where each spoken chunk starts in the item's audio, for truncation to what was heard.
    timeline: Vec<Said>,
    /// The response has finished queueing; playback ends once the queue is empty and played.
    complete: bool,
}

enum Out {
    Speak(String),
    Audio(Vec<i16>, f64),
    Words(Vec<WordEnd>),
}

/// A chunk as it was spoken: where its audio starts in the item's audio, its text, and where its
/// words end when the engine aligned them (empty: the heard share is estimated from the length).
#[derive(Debug, Clone, PartialEq)]
pub struct Said {
    pub start_ms: f64,
    pub text: String,
    pub words: Vec<WordEnd>,
}

impl Said {
    pub fn new(start_ms: f64, text: impl Into<String>) -> Said {
        Said { start_ms, text: text.into(), words: Vec::new() }
    }
}

/// What a tick of the clock releases, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// The first audio of the response goes out.
    Started,
    /// The text of the chunk whose audio follows.
    Text(String),
    /// Audio: one or more engine frames joined, up to [`OUTPUT_DELTA_MS_MAX`].
    Audio(Vec<i16>),
}

/// Where playback stood when it was cut.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// What the caller heard of the item, in ms of its audio.
    pub heard_ms: f64,
    /// Audio was sent that the caller has not heard, or more was still to come.
    pub unheard: bool,
    /// The text of what was heard, to whole words.
    pub heard_text: String,
    /// Where each chunk starts, and where the chunk playing at the cut ends.
    pub timeline: Vec<Said>,
    pub chunk_end_ms: f64,
    pub sent_ms: f64,
    pub started: bool,
}

impl Playback {
    pub fn new(response_id: String, item_id: String, format: AudioFormat) -> Playback {
        Playback {
            response_id,
            item_id,
            format,
            queue: VecDeque::new(),
            queued_ms: 0.0,
            started: None,
            sent_ms: 0.0,
            timeline: Vec::new(),
            complete: false,
        }
    }

    /// Its response has queued all it will: playback ends once the queue is sent and heard.
    pub fn finish(&mut self) {
        self.complete = true;
    }

    /// Audio queued and not yet sent, in ms.
    pub fn queued_ms(&self) -> f64 {
        self.queued_ms
    }

    pub fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn started(&self) -> bool {
        self.started.is_some()
    }

    pub fn sent_ms(&self) -> f64 {
        self.sent_ms
    }

    pub fn timeline(&self) -> &[Said] {
        &self.timeline
    }

    /// A chunk's text, released when its audio is about to play.
    pub fn speak(&mut self, text: String) {
        self.queue.push_back(Out::Speak(text));
    }

    /// Where words of the chunk being spoken end in its audio (the engine's alignment).
    pub fn words(&mut self, words: Vec<WordEnd>) {
        self.queue.push_back(Out::Words(words));
    }

    /// An engine frame of `ms`.
    pub fn audio(&mut self, samples: Vec<i16>, ms: f64) {
        self.queued_ms += ms;
        self.queue.push_back(Out::Audio(samples, ms));
    }

    /// When the session must next wake for this playback. `responding`: its response is still the
    /// active one (playback cannot end before it does).
    pub fn due(&self, lead: Duration, responding: bool) -> Option<Instant> {
        let at = |ms: f64| self.started.map(|s| s + Duration::from_secs_f64(ms / 1000.0));
        match self.queue.front() {
            Some(Out::Speak(_) | Out::Words(_)) => Some(Instant::now()),
            Some(Out::Audio(..)) => Some(at(self.sent_ms).map_or_else(Instant::now, |t| t.checked_sub(lead).unwrap_or(t))),
            // Drained: wake when the caller has heard the last of it.
            None if self.complete && !responding => at(self.sent_ms).or_else(|| Some(Instant::now())),
            None => None,
        }
    }

    /// Releases what is due at `now` onto `out`; returns whether playback has ended (all queued,
    /// sent and heard, and the response is over).
    pub fn tick(&mut self, now: Instant, lead: Duration, responding: bool, out: &mut Vec<Release>) -> bool {
        // Audio in the last `Release::Audio` of `out`.
        let mut delta_ms = 0.0;
        loop {
            match self.queue.front() {
                Some(Out::Speak(_)) => {
                    let Some(Out::Speak(text)) = self.queue.pop_front() else { unreachable!() };
                    self.timeline.push(Said::new(self.sent_ms, text.clone()));
                    out.push(Release::Text(text));
                }
                Some(Out::Words(_)) => {
                    let Some(Out::Words(words)) = self.queue.pop_front() else { unreachable!() };
                    if let Some(said) = self.timeline.last_mut() {
                        said.words.extend(words);
                    }
                }
                Some(&Out::Audio(_, next_ms)) => {
                    // A frame right after one sent in this pass joins it, up to OUTPUT_DELTA_MS_MAX.
                    let joins = matches!(out.last(), Some(Release::Audio(_))) && delta_ms + next_ms <= OUTPUT_DELTA_MS_MAX;
                    let due = self.started.map(|s| s + Duration::from_secs_f64(self.sent_ms / 1000.0));
                    if !joins && due.is_some_and(|d| d > now + lead) {
                        return false;
                    }
                    let Some(Out::Audio(samples, ms)) = self.queue.pop_front() else { unreachable!() };
                    if self.started.is_none() {
                        self.started = Some(now);
                        out.push(Release::Started);
                    }
                    self.sent_ms += ms;
                    self.queued_ms -= ms;
                    match out.last_mut() {
                        Some(Release::Audio(joined)) if joins => {
                            joined.extend_from_slice(&samples);
                            delta_ms += ms;
                        }
                        _ => {
                            out.push(Release::Audio(samples));
                            delta_ms = ms;
                        }
                    }
                }
                None => {
                    let played = self.started.is_none_or(|s| s + Duration::from_secs_f64(self.sent_ms / 1000.0) <= now);
                    return self.complete && !responding && played;
                }
            }
        }
    }

    /// Stops playback: what the caller heard by now, by the pacing clock. `responding`: its response
    /// is still producing.
    pub fn cut(mut self, responding: bool) -> Cut {
        let heard_ms = self.started.map_or(0.0, |s| (s.elapsed().as_secs_f64() * 1000.0).min(self.sent_ms));
        let unheard = self.sent_ms - heard_ms > 0.5 || !self.queue.is_empty() || responding;
        // The chunk playing at the cut ends after its audio still queued, not where sending stopped;
        // its word times still queued count too.
        let mut queued_of_chunk = 0.0;
        for o in self.queue.iter() {
            match o {
                Out::Audio(_, ms) => queued_of_chunk += ms,
                Out::Words(words) => {
                    if let Some(said) = self.timeline.last_mut() {
                        said.words.extend(words.iter().copied());
                    }
                }
                Out::Speak(_) => break,
            }
        }
        let chunk_end_ms = self.sent_ms + queued_of_chunk;
        let heard_text = heard_text(&self.timeline, chunk_end_ms, heard_ms);
        Cut { heard_ms, unheard, heard_text, timeline: self.timeline, chunk_end_ms, sent_ms: self.sent_ms, started: self.started.is_some() }
    }
}

/// The transcript of the first `heard_ms` of an item's audio: whole chunks that were heard, and the
/// heard share of the chunk playing at the cut. With the engine's word times that share ends at the
/// last word whose audio was all played; without them it is estimated from the share of the chunk's
/// audio played, ending at a word boundary.
pub fn heard_text(timeline: &[Said], total_ms: f64, heard_ms: f64) -> String {
    let mut out = String::new();
    for (i, said) in timeline.iter().enumerate() {
        let (start, text) = (said.start_ms, &said.text);
        if start >= heard_ms {
            break;
        }
        let end = timeline.get(i + 1).map_or(total_ms, |s| s.start_ms);
        if heard_ms >= end {
            out.push_str(text);
            continue;
        }
        if !said.words.is_empty() {
            let into_ms = heard_ms - start;
            let chars = said.words.iter().filter(|w| w.end_ms <= into_ms + 0.5).map(|w| w.chars).max().unwrap_or(0);
            out.push_str(&text[..nonblank_prefix_len(text, chars)]);
            break;
        }
        let share = ((heard_ms - start) / (end - start).max(1.0)).clamp(0.0, 1.0);
        let cut = (text.chars().count() as f64 * share).floor() as usize;
        let prefix: String = text.chars().take(cut).collect();
        // Keep whole words only.
        let words_end = if text.chars().nth(cut).is_none_or(char::is_whitespace) {
            prefix.len()
        } else {
            prefix.rfind(char::is_whitespace).unwrap_or(0)
        };
        out.push_str(&prefix[..words_end]);
        break;
    }
    out
}

/// The length in bytes of the shortest prefix of `text` holding its first `n` non-blank characters.
fn nonblank_prefix_len(text: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let mut seen = 0;
    for (i, c) in text.char_indices() {
        if !c.is_whitespace() {
            seen += 1;
            if seen == n {
                return i + c.len_utf8();
            }
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heard_text_keeps_whole_chunks_and_whole_words() {
        let timeline =
            vec![Said::new(0.0, "Sure, "), Said::new(400.0, "your table is booked for seven. "), Said::new(2000.0, "Anything else?")];
        assert_eq!(heard_text(&timeline, 3000.0, 0.0), "");
        assert_eq!(heard_text(&timeline, 3000.0, 400.0), "Sure, ");
        assert_eq!(heard_text(&timeline, 3000.0, 3000.0), "Sure, your table is booked for seven. Anything else?");
        let half = heard_text(&timeline, 3000.0, 1200.0);
        assert!(half.starts_with("Sure, your table"), "{half}");
        assert!(!half.contains("Anything"), "{half}");
        assert!(half.ends_with(' ') || half.ends_with(|c: char| c.is_alphanumeric()), "{half}");
        // Beyond the end is clamped to everything.
        assert_eq!(heard_text(&timeline, 3000.0, 9000.0), "Sure, your table is booked for seven. Anything else?");
    }

    fn frames(p: &mut Playback, n: usize) {
        for _ in 0..n {
            p.audio(vec![1; 480], 20.0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn audio_is_paced_and_joined_into_deltas_of_at_most_60_ms() {
        let lead = Duration::from_millis(100);
        let mut p = Playback::new("resp_1".into(), "item_1".into(), AudioFormat::REALTIME_PCM);
        p.speak("Hello there. ".into());
        frames(&mut p, 20); // 400 ms
        p.finish();
        let mut out = Vec::new();
        let t0 = Instant::now();
        assert!(!p.tick(t0, lead, false, &mut out));
        // The text first, then the start, then audio up to the lead (100 ms) plus one joined delta.
        assert_eq!(out[0], Release::Text("Hello there. ".into()));
        assert_eq!(out[1], Release::Started);
        let sent: usize = out.iter().map(|r| if let Release::Audio(s) = r { s.len() } else { 0 }).sum();
        assert!(out.iter().all(|r| !matches!(r, Release::Audio(s) if s.len() > 3 * 480)), "a delta over 60 ms");
        assert!(p.sent_ms() <= 100.0 + OUTPUT_DELTA_MS_MAX + 20.0, "sent {} ms at once", p.sent_ms());
        assert_eq!(sent as f64 / 24.0, p.sent_ms());
        // Nothing more is due until real time catches up.
        out.clear();
        assert!(!p.tick(t0, lead, false, &mut out));
        assert!(out.is_empty());
        // Once all is sent and heard, and the response is over, playback ends.
        let mut ended = false;
        for _ in 0..100 {
            let now = p.due(lead, false).expect("due");
            tokio::time::advance(now.saturating_duration_since(Instant::now())).await;
            out.clear();
            if p.tick(Instant::now(), lead, false, &mut out) {
                ended = true;
                break;
            }
        }
        assert!(ended);
        assert_eq!(p.sent_ms(), 400.0);
        assert!(Instant::now() >= t0 + Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_reports_what_the_caller_heard_by_the_clock() {
        let lead = Duration::from_millis(100);
        let mut p = Playback::new("resp_1".into(), "item_1".into(), AudioFormat::REALTIME_PCM);
        p.speak("one two three four ".into());
        frames(&mut p, 50); // 1 s for the chunk
        let mut out = Vec::new();
        p.tick(Instant::now(), lead, true, &mut out);
        for _ in 0..25 {
            tokio::time::advance(Duration::from_millis(20)).await;
            out.clear();
            p.tick(Instant::now(), lead, true, &mut out);
        }
        let sent_ms = p.sent_ms();
        assert!(sent_ms > 500.0 && sent_ms <= 500.0 + 100.0 + OUTPUT_DELTA_MS_MAX, "sent {sent_ms} ms");
        let cut = p.cut(true);
        assert!(cut.unheard);
        assert!((cut.heard_ms - 500.0).abs() < 1e-6, "{cut:?}");
        assert_eq!(cut.chunk_end_ms, 1000.0);
        // Half of "one two three four " is nine characters, cut back to a whole word.
        assert_eq!(cut.heard_text, "one two");
    }

    #[tokio::test(start_paused = true)]
    async fn with_word_times_a_cut_ends_at_the_last_word_played() {
        let lead = Duration::from_millis(100);
        let mut p = Playback::new("resp_1".into(), "item_1".into(), AudioFormat::REALTIME_PCM);
        p.speak("one two three four ".into());
        frames(&mut p, 25);
        // The engine says "three" ends at 450 ms: the length estimate would stop after "two".
        let word = |chars, end_ms| WordEnd { chars, end_ms };
        p.words(vec![word(3, 100.0), word(6, 150.0)]);
        frames(&mut p, 25);
        p.words(vec![word(11, 450.0), word(15, 900.0)]);
        let mut out = Vec::new();
        p.tick(Instant::now(), lead, true, &mut out);
        for _ in 0..25 {
            tokio::time::advance(Duration::from_millis(20)).await;
            out.clear();
            p.tick(Instant::now(), lead, true, &mut out);
        }
        let cut = p.cut(true);
        assert!((cut.heard_ms - 500.0).abs() < 1e-6, "{cut:?}");
        assert_eq!(cut.heard_text, "one two three");
        assert_eq!(cut.timeline[0].words.len(), 4, "word times still queued at the cut count");
        // A client's own truncation later reads the same timeline.
        assert_eq!(heard_text(&cut.timeline, cut.chunk_end_ms, 120.0), "one");
        assert_eq!(heard_text(&cut.timeline, cut.chunk_end_ms, 50.0), "");
    }

    #[test]
    fn word_ends_count_non_blank_characters() {
        assert_eq!(nonblank_prefix_len("  Hi, there ", 3), 5);
        assert_eq!(nonblank_prefix_len("Hi", 9), 2);
        assert_eq!(nonblank_prefix_len("Hi", 0), 0);
        assert_eq!(nonblank_prefix_len("é b", 1), 2);
    }
}
