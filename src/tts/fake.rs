//! An in-process text-to-speech engine for tests and benchmarks: a quiet 220 Hz sine whose length
//! follows the text, scripted by the voice name.
//!
//! The voice is a `+`-separated list of directives (anything unknown is ignored, like a real voice name):
//! - `slow-MS`: wait MS milliseconds before the first frame (instead of `ttfb_ms`);
//! - `hz-N`: a tone of N Hz instead of 220, so a test can hear which voice spoke (N below half the rate);
//! - `error`: fail with [`TtsError::Engine`].

use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, TextToSpeech, TtsError};

/// Tone frequency and amplitude: quiet, but with real energy for a VAD or level meter.
const TONE_HZ: u32 = 220;
const TONE_AMPLITUDE: f64 = 2_000.0;

/// How the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeTtsSettings {
    /// Output sample rate (default 24 000).
    pub rate_hz: u32,
    /// Wait before the first frame (default 0).
    pub ttfb_ms: u64,
    /// Audio length per non-whitespace character (default 60).
    pub ms_per_char: u32,
    /// Frame length (default 20).
    pub frame_ms: u32,
    /// Wait with [`crate::fake_clock`]'s precise timer (benchmarks) instead of tokio's.
    pub precise_timing: bool,
}

impl Default for FakeTtsSettings {
    fn default() -> Self {
        FakeTtsSettings { rate_hz: 24_000, ttfb_ms: 0, ms_per_char: 60, frame_ms: 20, precise_timing: false }
    }
}

/// The fake engine. See the module doc.
#[derive(Debug, Clone)]
pub struct FakeTts {
    settings: FakeTtsSettings,
    /// Whole periods of the tone (`rate / gcd(rate, 220)` samples), computed once: a benchmark
    /// with hundreds of sessions must measure the pipeline, not the fake's `sin` calls.
    tone: std::sync::Arc<[i16]>,
}

impl FakeTts {
    pub fn new(settings: FakeTtsSettings) -> Self {
        let rate_hz = settings.rate_hz.max(1_000);
        let frame_ms = settings.frame_ms.max(1);
        FakeTts { settings: FakeTtsSettings { rate_hz, frame_ms, ..settings }, tone: tone(rate_hz, TONE_HZ) }
    }

    /// How many samples `text` becomes: `ms_per_char` per non-whitespace character, at least one
    /// frame for non-empty text, none for whitespace only.
    pub fn samples_for(&self, text: &str) -> usize {
        let chars = text.chars().filter(|c| !c.is_whitespace()).count() as u64;
        if chars == 0 {
            return 0;
        }
        let ms = (chars * u64::from(self.settings.ms_per_char)).max(u64::from(self.settings.frame_ms));
        (ms * u64::from(self.settings.rate_hz) / 1000) as usize
    }

    fn frame_len(&self) -> usize {
        (u64::from(self.settings.frame_ms) * u64::from(self.settings.rate_hz) / 1000).max(1) as usize
    }
}

/// Whole periods of a `hz` tone at `rate_hz`: `rate / gcd(rate, hz)` samples.
fn tone(rate_hz: u32, hz: u32) -> std::sync::Arc<[i16]> {
    let (mut a, mut b) = (rate_hz, hz);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    (0..rate_hz / a)
        .map(|k| (TONE_AMPLITUDE * (2.0 * std::f64::consts::PI * f64::from(hz) * f64::from(k) / f64::from(rate_hz)).sin()) as i16)
        .collect()
}

#[derive(Debug, Default)]
struct VoiceScript {
    slow_ms: Option<u64>,
    tone_hz: Option<u32>,
    error: bool,
}

fn parse_voice(voice: Option<&str>) -> VoiceScript {
    let mut script = VoiceScript::default();
    for part in voice.unwrap_or_default().split('+') {
        if part == "error" {
            script.error = true;
        } else if let Some(ms) = part.strip_prefix("slow-").and_then(|n| n.parse().ok()) {
            script.slow_ms = Some(ms);
        } else if let Some(hz) = part.strip_prefix("hz-").and_then(|n| n.parse().ok()) {
            script.tone_hz = Some(hz);
        }
    }
    script
}

impl TextToSpeech for FakeTts {
    fn name(&self) -> &str {
        "fake"
    }

    fn rate_hz(&self) -> u32 {
        self.settings.rate_hz
    }

    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        let script = parse_voice(voice.as_deref());
        let ttfb_ms = script.slow_ms.unwrap_or(self.settings.ttfb_ms);
        let total = self.samples_for(&text);
        let frame_len = self.frame_len();
        let tone = match script.tone_hz {
            Some(hz) if hz > 0 && hz < self.settings.rate_hz / 2 => tone(self.settings.rate_hz, hz),
            _ => self.tone.clone(),
        };
        let precise = self.settings.precise_timing;
        Box::pin(async move {
            if script.error {
                return Err(TtsError::Engine(format!("scripted failure for voice {:?}", voice.unwrap_or_default())));
            }
            crate::fake_clock::wait(Duration::from_millis(ttfb_ms), precise).await;
            let mut sent = 0;
            while sent < total {
                let len = frame_len.min(total - sent);
                let frame = (sent..sent + len).map(|k| tone[k % tone.len()]).collect();
                if audio.send(frame).await.is_err() {
                    // The listener hung up (barge-in): nothing left to do.
                    return Ok(());
                }
                sent += len;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    async fn collect(tts: &FakeTts, text: &str, voice: Option<&str>) -> (Result<(), TtsError>, Vec<Vec<i16>>) {
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(tts.synthesize(text.to_owned(), voice.map(str::to_owned), tx));
        let mut frames = Vec::new();
        while let Some(frame) = rx.recv().await {
            frames.push(frame);
        }
        (task.await.unwrap(), frames)
    }

    #[tokio::test(start_paused = true)]
    async fn length_follows_text() {
        let tts = FakeTts::new(FakeTtsSettings::default());
        assert_eq!(tts.name(), "fake");
        assert_eq!(tts.rate_hz(), 24_000);
        // 10 non-whitespace chars: 600 ms = 14 400 samples = 30 frames of 480.
        let (result, frames) = collect(&tts, "  hello world \n", None).await;
        result.unwrap();
        assert_eq!(frames.len(), 30);
        assert!(frames.iter().all(|f| f.len() == 480));
        // Twice the text, twice the audio.
        let (_, frames) = collect(&tts, "hello world hello world", None).await;
        assert_eq!(frames.iter().map(Vec::len).sum::<usize>(), 2 * 14_400);
        // One char is still at least one frame; a partial last frame is kept.
        let tts = FakeTts::new(FakeTtsSettings { ms_per_char: 7, ..FakeTtsSettings::default() });
        let (_, frames) = collect(&tts, "a", None).await;
        assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), [480]);
        let (_, frames) = collect(&tts, "abcd", None).await;
        assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), [480, 192]);
        // Whitespace only: no audio, still Ok.
        let (result, frames) = collect(&tts, " \n\t", None).await;
        result.unwrap();
        assert!(frames.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_audio_is_a_quiet_continuous_sine() {
        let tts = FakeTts::new(FakeTtsSettings::default());
        let (_, frames) = collect(&tts, "hello", None).await;
        let samples: Vec<i16> = frames.concat();
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((1_900..=2_000).contains(&peak), "peak {peak}");
        let rms = (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
        assert!((rms - 2_000.0 / 2f64.sqrt()).abs() < 30.0, "rms {rms}");
        // 220 Hz: 440 sign changes a second (300 ms here), with no jump between frames.
        let crossings = samples.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        assert!((130..=134).contains(&crossings), "{crossings} crossings");
        assert!(samples.windows(2).all(|w| (i32::from(w[0]) - i32::from(w[1])).abs() < 120));
    }

    #[tokio::test(start_paused = true)]
    async fn an_hz_voice_changes_the_tone_and_nothing_else() {
        let tts = FakeTts::new(FakeTtsSettings::default());
        let crossings = |frames: &[Vec<i16>]| frames.concat().windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        // "hello" is 300 ms: 1 000 Hz is 600 sign changes, 220 Hz (the default) 132.
        let (_, frames) = collect(&tts, "hello", Some("x+hz-1000")).await;
        assert_eq!(frames.iter().map(Vec::len).sum::<usize>(), 7_200);
        assert!((598..=601).contains(&crossings(&frames)), "{} crossings", crossings(&frames));
        // Out of range (at or above half the rate, or zero): the default tone.
        for voice in ["hz-12000", "hz-0", "hz-x"] {
            let (_, frames) = collect(&tts, "hello", Some(voice)).await;
            assert!((130..=134).contains(&crossings(&frames)), "{voice}: {} crossings", crossings(&frames));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttfb_is_honoured_and_slow_voice_overrides_it() {
        for (settings_ttfb_ms, voice, expected_ms) in
            [(0, None, 0), (250, None, 250), (250, Some("slow-900"), 900), (0, Some("x+slow-40"), 40)]
        {
            let tts = FakeTts::new(FakeTtsSettings { ttfb_ms: settings_ttfb_ms, ..FakeTtsSettings::default() });
            let (tx, mut rx) = mpsc::channel(64);
            let started = Instant::now();
            let task = tokio::spawn(tts.synthesize("Hello there.".into(), voice.map(str::to_owned), tx));
            rx.recv().await.unwrap();
            assert_eq!(started.elapsed(), Duration::from_millis(expected_ms), "{voice:?}");
            // The rest follows at once: the fake does not pace its output.
            while rx.recv().await.is_some() {}
            assert_eq!(started.elapsed(), Duration::from_millis(expected_ms));
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn error_voice_fails() {
        let tts = FakeTts::new(FakeTtsSettings::default());
        let (result, frames) = collect(&tts, "Hello.", Some("error")).await;
        let error = result.unwrap_err();
        assert!(matches!(error, TtsError::Engine(_)));
        assert_eq!(error.kind(), "engine");
        assert!(frames.is_empty());
        let (result, _) = collect(&tts, "Hello.", Some("slow-10+error")).await;
        assert!(result.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_receiver_ends_early_with_ok() {
        let tts = FakeTts::new(FakeTtsSettings::default());
        // Channel of one: the engine blocks on the second frame until the receiver goes away.
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(tts.synthesize("a long answer ".repeat(50), None, tx));
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        drop(rx);
        task.await.unwrap().unwrap();
        // Closed from the start: also Ok, without waiting.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        tts.synthesize("Hello.".into(), None, tx).await.unwrap();
    }
}
