//! A scripted speech-to-text engine for tests and benchmarks: it "hears" the transcript written in a
//! script instead of the audio, but paces its partials by the audio it receives, like a real engine.
//!
//! Scripts come from sidecar files (`NAME.json` beside each fixture `NAME.wav`):
//! `{"utterances":[{"text": "...", "speaker": "A", "words":[{"text","start_ms","end_ms","confidence"}]}]}`
//! with word times relative to the start of the WAV; an utterance may carry `"error": "message"`
//! instead, to script a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{BoxFuture, SpeechToText, SttError, Transcript, Utterance, Word, STT_RATE_HZ};

/// Word length of [`ScriptedUtterance::from_text`].
pub const FROM_TEXT_WORD_MS: u64 = 300;
/// Word confidence of [`ScriptedUtterance::from_text`].
pub const FROM_TEXT_CONFIDENCE: f32 = 0.9;

/// The transcript file beside a fixture WAV.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    #[serde(default)]
    pub utterances: Vec<ScriptedUtterance>,
}

/// What the fake hears for one utterance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedUtterance {
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
    #[serde(default)]
    pub words: Vec<ScriptedWord>,
    /// When set, transcribing this utterance fails with this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One word, timed from the start of the sidecar's WAV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedWord {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub confidence: f32,
}

impl Sidecar {
    /// Reads and checks a sidecar: words in order, each ending after it starts, confidence in 0..=1.
    pub fn load(path: &Path) -> Result<Sidecar, SttError> {
        let fail = |why: String| SttError::Unavailable(format!("sidecar {}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let sidecar: Sidecar = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let mut previous_end_ms = 0;
        for (u, utterance) in sidecar.utterances.iter().enumerate() {
            for (w, word) in utterance.words.iter().enumerate() {
                let at = format!("utterance {u}, word {w} ({:?})", word.text);
                if word.end_ms < word.start_ms {
                    return Err(fail(format!("{at} ends at {} ms before it starts at {} ms", word.end_ms, word.start_ms)));
                }
                if word.start_ms < previous_end_ms {
                    return Err(fail(format!(
                        "{at} starts at {} ms, before the previous word ends at {previous_end_ms} ms",
                        word.start_ms
                    )));
                }
                if !(0.0..=1.0).contains(&word.confidence) {
                    return Err(fail(format!("{at} has confidence {} outside 0..=1", word.confidence)));
                }
                previous_end_ms = word.end_ms;
            }
        }
        Ok(sidecar)
    }
}

impl ScriptedUtterance {
    /// An utterance whose words follow one another, [`FROM_TEXT_WORD_MS`] each, with confidence
    /// [`FROM_TEXT_CONFIDENCE`]: for benchmarks and scripts given in config.
    pub fn from_text(text: &str) -> ScriptedUtterance {
        let words: Vec<ScriptedWord> = text
            .split_whitespace()
            .zip(0u64..)
            .map(|(word, i)| ScriptedWord {
                text: word.to_owned(),
                start_ms: i * FROM_TEXT_WORD_MS,
                end_ms: (i + 1) * FROM_TEXT_WORD_MS,
                confidence: FROM_TEXT_CONFIDENCE,
            })
            .collect();
        let text = words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
        ScriptedUtterance { text, speaker: None, words, error: None }
    }
}

/// The scripted engine. Utterance number `n` of a session gets `script[n % script.len()]`.
#[derive(Debug, Clone)]
pub struct FakeStt {
    script: Arc<[ScriptedUtterance]>,
    latency_ms: u64,
    precise_timing: bool,
}

impl FakeStt {
    /// `latency_ms`: the wait between the end of the audio and the final transcript.
    pub fn new(script: Vec<ScriptedUtterance>, latency_ms: u64) -> FakeStt {
        FakeStt { script: script.into(), latency_ms, precise_timing: false }
    }

    /// The utterances of every sidecar, in order.
    /// Waits with [`crate::fake_clock`]'s precise timer (benchmarks) instead of tokio's.
    pub fn with_precise_timing(self, precise_timing: bool) -> FakeStt {
        FakeStt { precise_timing, ..self }
    }

    pub fn from_sidecars(paths: &[PathBuf], latency_ms: u64) -> Result<FakeStt, SttError> {
        let mut script = Vec::new();
        for path in paths {
            script.extend(Sidecar::load(path)?.utterances);
        }
        Ok(FakeStt::new(script, latency_ms))
    }
}

/// Words re-based so the first starts at `start_ms`.
fn rebase(words: &[ScriptedWord], start_ms: u64) -> Vec<Word> {
    let origin_ms = words.first().map_or(0, |w| w.start_ms);
    words
        .iter()
        .map(|w| Word {
            text: w.text.clone(),
            start_ms: start_ms + w.start_ms.saturating_sub(origin_ms),
            end_ms: start_ms + w.end_ms.saturating_sub(origin_ms),
            confidence: w.confidence,
        })
        .collect()
}

fn transcript(text: String, words: Vec<Word>, speaker: Option<String>) -> Transcript {
    let confidence = if words.is_empty() { 0.0 } else { words.iter().map(|w| w.confidence).sum::<f32>() / words.len() as f32 };
    Transcript { text, words, speaker, confidence, engine: None }
}

impl SpeechToText for FakeStt {
    fn name(&self) -> &str {
        "fake"
    }

    fn transcribe(&self, mut utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        let line = match self.script.len() {
            0 => ScriptedUtterance::default(),
            len => self.script[utterance.ordinal as usize % len].clone(),
        };
        let latency = Duration::from_millis(self.latency_ms);
        let precise = self.precise_timing;
        Box::pin(async move {
            let words = rebase(&line.words, utterance.start_ms);
            let origin_ms = line.words.first().map_or(0, |w| w.start_ms);
            let mut received_samples = 0u64;
            let mut heard = 0;
            while let Some(frame) = utterance.audio.recv().await {
                received_samples += frame.len() as u64;
                let received_ms = received_samples * 1000 / u64::from(STT_RATE_HZ);
                let covered = line.words.iter().take_while(|w| w.end_ms.saturating_sub(origin_ms) <= received_ms).count();
                if covered > heard && line.error.is_none() {
                    heard = covered;
                    let so_far = words[..heard].to_vec();
                    let text = so_far.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
                    // Partials are advisory: a full queue drops this one.
                    let _ = partials.try_send(transcript(text, so_far, line.speaker.clone()));
                }
            }
            crate::fake_clock::wait(latency, precise).await;
            match line.error {
                Some(message) => Err(SttError::Engine(message)),
                None => Ok(transcript(line.text, words, line.speaker)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    fn word(text: &str, start_ms: u64, end_ms: u64, confidence: f32) -> ScriptedWord {
        ScriptedWord { text: text.into(), start_ms, end_ms, confidence }
    }

    fn booking() -> ScriptedUtterance {
        ScriptedUtterance {
            text: "Book a table.".into(),
            speaker: Some("A".into()),
            words: vec![word("Book", 400, 700, 0.8), word("a", 750, 800, 0.9), word("table", 850, 1_300, 1.0)],
            error: None,
        }
    }

    fn samples(ms: u64) -> Vec<i16> {
        vec![0; (ms * u64::from(STT_RATE_HZ) / 1000) as usize]
    }

    struct Call {
        audio: mpsc::Sender<Vec<i16>>,
        partials: mpsc::Receiver<Transcript>,
        result: tokio::task::JoinHandle<Result<Transcript, SttError>>,
    }

    fn start(stt: &FakeStt, start_ms: u64, ordinal: u32) -> Call {
        let (audio, audio_rx) = mpsc::channel(16);
        let (partials_tx, partials) = mpsc::channel(16);
        let result = tokio::spawn(stt.transcribe(Utterance { start_ms, ordinal, audio: audio_rx, pause: None }, partials_tx));
        Call { audio, partials, result }
    }

    #[tokio::test(start_paused = true)]
    async fn partials_follow_the_audio_and_the_final_comes_after_the_latency() {
        let stt = FakeStt::new(vec![booking()], 250);
        assert_eq!(stt.name(), "fake");
        let mut call = start(&stt, 10_000, 0);
        // 299 ms of audio: the first word (300 ms long, re-based to 0..300) is not covered yet.
        call.audio.send(samples(299)).await.unwrap();
        call.audio.send(samples(1)).await.unwrap();
        let first = call.partials.recv().await.unwrap();
        assert_eq!(first.text, "Book");
        assert_eq!(first.words, [Word { text: "Book".into(), start_ms: 10_000, end_ms: 10_300, confidence: 0.8 }]);
        assert_eq!(first.speaker.as_deref(), Some("A"));
        // 900 ms covers "a" (ends at 400) and "table" (ends at 900) at once: one partial with both.
        call.audio.send(samples(600)).await.unwrap();
        let second = call.partials.recv().await.unwrap();
        assert_eq!(second.text, "Book a table");
        assert!((second.confidence - 0.9).abs() < 1e-6);
        call.audio.send(samples(500)).await.unwrap();
        let closed_at = Instant::now();
        drop(call.audio);
        let last = call.result.await.unwrap().unwrap();
        assert_eq!(closed_at.elapsed(), Duration::from_millis(250));
        assert_eq!(last.text, "Book a table.");
        assert_eq!(last.speaker.as_deref(), Some("A"));
        assert_eq!(
            last.words.iter().map(|w| (w.start_ms, w.end_ms)).collect::<Vec<_>>(),
            [(10_000, 10_300), (10_350, 10_400), (10_450, 10_900)]
        );
        assert!((last.confidence - 0.9).abs() < 1e-6);
        // No partial after the last word.
        assert!(call.partials.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_partials_queue_drops_partials_but_not_the_final() {
        let stt = FakeStt::new(vec![ScriptedUtterance::from_text("one two three four")], 0);
        let (audio, audio_rx) = mpsc::channel(16);
        let (partials_tx, mut partials) = mpsc::channel(1);
        let result = tokio::spawn(stt.transcribe(Utterance { start_ms: 0, ordinal: 0, audio: audio_rx, pause: None }, partials_tx));
        for _ in 0..4 {
            audio.send(samples(300)).await.unwrap();
        }
        drop(audio);
        let last = result.await.unwrap().unwrap();
        assert_eq!(last.text, "one two three four");
        assert_eq!(partials.recv().await.unwrap().text, "one");
        assert!(partials.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_line_fails_after_the_audio_ends() {
        let failing = ScriptedUtterance { error: Some("scripted outage".into()), ..ScriptedUtterance::default() };
        let stt = FakeStt::new(vec![failing], 100);
        let call = start(&stt, 0, 0);
        call.audio.send(samples(500)).await.unwrap();
        let closed_at = Instant::now();
        drop(call.audio);
        let error = call.result.await.unwrap().unwrap_err();
        assert_eq!(closed_at.elapsed(), Duration::from_millis(100));
        assert!(matches!(&error, SttError::Engine(m) if m == "scripted outage"), "{error:?}");
        assert_eq!(error.kind(), "engine");
    }

    #[tokio::test(start_paused = true)]
    async fn ordinals_cycle_through_the_script() {
        let script =
            vec![ScriptedUtterance::from_text("first"), ScriptedUtterance::from_text("second"), ScriptedUtterance::from_text("third")];
        let stt = FakeStt::new(script, 0);
        for (ordinal, expected) in [(0, "first"), (1, "second"), (2, "third"), (3, "first"), (7, "second")] {
            let call = start(&stt, 0, ordinal);
            drop(call.audio);
            assert_eq!(call.result.await.unwrap().unwrap().text, expected, "ordinal {ordinal}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_script_gives_an_empty_transcript() {
        let stt = FakeStt::new(Vec::new(), 30);
        let call = start(&stt, 0, 5);
        call.audio.send(samples(1_000)).await.unwrap();
        drop(call.audio);
        assert_eq!(call.result.await.unwrap().unwrap(), Transcript::default());
    }

    #[test]
    fn from_text_spreads_words_evenly() {
        let line = ScriptedUtterance::from_text("  table  for four ");
        assert_eq!(line.text, "table for four");
        assert_eq!(line.words, [word("table", 0, 300, 0.9), word("for", 300, 600, 0.9), word("four", 600, 900, 0.9)]);
        assert_eq!(ScriptedUtterance::from_text("").words, []);
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("voxgate-stt-fake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[tokio::test(start_paused = true)]
    async fn sidecars_load_and_concatenate() {
        let one = temp_file(
            "one.json",
            r#"{"utterances":[{"text":"Hi.","speaker":"A","words":[{"text":"Hi","start_ms":300,"end_ms":600,"confidence":0.95}]}]}"#,
        );
        let two = temp_file("two.json", r#"{"utterances":[{"error":"boom"},{"text":"Bye.","words":[]}]}"#);
        let silent = temp_file("silent.json", r#"{"utterances":[]}"#);
        let sidecar = Sidecar::load(&one).unwrap();
        assert_eq!(sidecar.utterances[0].words[0], word("Hi", 300, 600, 0.95));
        let stt = FakeStt::from_sidecars(&[one, silent, two], 0).unwrap();
        let texts: Vec<_> = stt.script.iter().map(|u| (u.text.as_str(), u.error.as_deref())).collect();
        assert_eq!(texts, [("Hi.", None), ("", Some("boom")), ("Bye.", None)]);
        let call = start(&stt, 2_000, 0);
        drop(call.audio);
        let hi = call.result.await.unwrap().unwrap();
        assert_eq!((hi.words[0].start_ms, hi.words[0].end_ms), (2_000, 2_300));
    }

    #[test]
    fn bad_sidecars_name_the_file_and_the_problem() {
        let cases = [
            ("syntax.json", "{\"utterances\": [", "EOF"),
            ("unknown.json", r#"{"utterances":[{"txt":"typo"}]}"#, "unknown field `txt`"),
            ("backwards.json", r#"{"utterances":[{"words":[{"text":"x","start_ms":500,"end_ms":400,"confidence":1}]}]}"#, "ends at 400 ms"),
            (
                "order.json",
                r#"{"utterances":[{"words":[{"text":"a","start_ms":0,"end_ms":400,"confidence":1},{"text":"b","start_ms":300,"end_ms":500,"confidence":1}]}]}"#,
                "before the previous word ends",
            ),
            ("confidence.json", r#"{"utterances":[{"words":[{"text":"x","start_ms":0,"end_ms":1,"confidence":1.5}]}]}"#, "outside 0..=1"),
        ];
        for (name, contents, why) in cases {
            let path = temp_file(name, contents);
            let message = Sidecar::load(&path).unwrap_err().to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(why), "{name}: {message}");
        }
        let missing = std::env::temp_dir().join("voxgate-no-such-sidecar.json");
        let message = FakeStt::from_sidecars(std::slice::from_ref(&missing), 0).unwrap_err().to_string();
        assert!(message.contains(&missing.display().to_string()), "{message}");
    }
}
