//! The embedded text-to-speech engines against the real programs and files, offline: Piper
//! (`embedded-tts` feature) and espeak-ng (always).
//!
//! Piper's files must be fetched first (`voxgate models fetch`, into `$VOXGATE_MODELS_DIR` or
//! `./models`); a missing file FAILS these tests with that instruction, they never skip. espeak-ng
//! must be installed (Debian package `espeak-ng`). Timings are printed (`--nocapture`), never
//! asserted.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use voxgate::tts::espeak::EspeakTts;
use voxgate::tts::{TextToSpeech, TtsError};

/// The 17-word sentence the engine measurements use.
const SENTENCE_17_WORDS: &str = "The quick brown fox jumps over the lazy dog while seven happy children watch from the old stone bridge.";

/// Everything one `synthesize` sent, with the time of the first frame.
struct Spoken {
    frames: Vec<Vec<i16>>,
    first_audio: Option<Duration>,
    total: Duration,
}

impl Spoken {
    fn samples(&self) -> Vec<i16> {
        self.frames.concat()
    }

    fn seconds(&self, rate_hz: u32) -> f64 {
        self.samples().len() as f64 / f64::from(rate_hz)
    }

    fn rms(&self) -> f64 {
        let samples = self.samples();
        (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64).sqrt()
    }
}

async fn speak(tts: &dyn TextToSpeech, text: &str, voice: Option<&str>) -> Result<Spoken, TtsError> {
    let (tx, mut rx) = mpsc::channel(64);
    let started = Instant::now();
    let task = tokio::spawn(tts.synthesize(text.to_owned(), voice.map(str::to_owned), tx));
    let mut frames = Vec::new();
    let mut first_audio = None;
    while let Some(frame) = rx.recv().await {
        first_audio.get_or_insert_with(|| started.elapsed());
        frames.push(frame);
    }
    task.await.expect("synthesize panicked")?;
    Ok(Spoken { frames, first_audio, total: started.elapsed() })
}

fn assert_20_ms_frames(spoken: &Spoken, rate_hz: u32) {
    let frame = (rate_hz / 50) as usize;
    let (last, rest) = spoken.frames.split_last().expect("no audio at all");
    assert!(rest.iter().all(|f| f.len() == frame), "frames of {frame} samples expected");
    assert!((1..=frame).contains(&last.len()));
}

#[tokio::test]
async fn espeak_speaks_a_sentence() {
    let tts = EspeakTts::new("en-us").expect("espeak-ng must be installed (apt-get install espeak-ng)");
    assert_eq!((tts.name(), tts.rate_hz()), ("espeak-ng", 22_050));
    let spoken = speak(&tts, SENTENCE_17_WORDS, None).await.unwrap();
    let seconds = spoken.seconds(22_050);
    assert!((1.5..8.0).contains(&seconds), "{seconds} s of audio");
    assert!(spoken.rms() > 500.0, "rms {}", spoken.rms());
    assert_20_ms_frames(&spoken, 22_050);
    let short = speak(&tts, "Sure.", None).await.unwrap();
    println!(
        "espeak-ng: \"Sure.\" first audio {:?}; 17 words first audio {:?}, total {:?}, {seconds:.2} s of audio",
        short.first_audio.unwrap(),
        spoken.first_audio.unwrap(),
        spoken.total
    );
    // Whitespace only: nothing, Ok.
    assert!(speak(&tts, "  \n", None).await.unwrap().frames.is_empty());
}

#[cfg(feature = "embedded-tts")]
mod piper {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use voxgate::tts::piper::PiperTts;

    use super::*;

    fn model_files() -> (PathBuf, PathBuf) {
        let dir = voxgate::models::default_models_dir();
        let voice = voxgate::models::piper_voice_path(&dir);
        let library = voxgate::models::onnxruntime_path(&dir);
        for path in [&voice, &library] {
            assert!(
                path.is_file(),
                "{} is missing: run `voxgate models fetch` first (the models folder is $VOXGATE_MODELS_DIR, else ./models)",
                path.display()
            );
        }
        (voice, library)
    }

    /// One engine with two workers for the tests that only speak.
    fn shared() -> &'static PiperTts {
        static TTS: OnceLock<PiperTts> = OnceLock::new();
        TTS.get_or_init(|| {
            let (voice, library) = model_files();
            PiperTts::load(&voice, &library, 2).expect("the Piper voice loads")
        })
    }

    #[tokio::test]
    async fn piper_speaks_a_17_word_sentence() {
        let tts = tokio::task::spawn_blocking(shared).await.unwrap();
        assert_eq!((tts.name(), tts.rate_hz()), ("piper-en-us-joe-medium", 22_050));
        // Warm up (the first run allocates), then measure.
        speak(tts, "Hello.", None).await.unwrap();
        let spoken = speak(tts, SENTENCE_17_WORDS, None).await.unwrap();
        let seconds = spoken.seconds(22_050);
        assert!((1.5..8.0).contains(&seconds), "{seconds} s of audio");
        assert!(spoken.rms() > 500.0, "silent? rms {}", spoken.rms());
        assert_20_ms_frames(&spoken, 22_050);
        let short = speak(tts, "Sure.", None).await.unwrap();
        assert!((0.2..2.0).contains(&short.seconds(22_050)), "{} s", short.seconds(22_050));
        println!(
            "piper: \"Sure.\" first audio {:?}; 17 words first audio {:?}, total {:?}, {seconds:.2} s of audio",
            short.first_audio.unwrap(),
            spoken.first_audio.unwrap(),
            spoken.total
        );
    }

    #[tokio::test]
    async fn voices_empty_text_and_long_text() {
        let tts = tokio::task::spawn_blocking(shared).await.unwrap();
        // An unknown voice name speaks with the default voice.
        let named = speak(tts, "Sure.", Some("piper-en-us-joe-medium")).await.unwrap();
        let unknown = speak(tts, "Sure.", Some("no-such-voice")).await.unwrap();
        assert!(!named.frames.is_empty() && !unknown.frames.is_empty());
        assert!(speak(tts, " \t\n ", None).await.unwrap().frames.is_empty());
        assert!(speak(tts, "...", None).await.unwrap().frames.is_empty());
        // One 600-character sentence without punctuation is spoken in pieces, all of it.
        let long = "and then we walked a little further ".repeat(17);
        let spoken = speak(tts, &long, None).await.unwrap();
        let seconds = spoken.seconds(22_050);
        assert!(seconds > 20.0, "{seconds} s for {} characters", long.len());
    }

    #[tokio::test]
    async fn concurrent_requests_share_a_bounded_pool() {
        let (voice, library) = model_files();
        let tts = tokio::task::spawn_blocking(move || PiperTts::load(&voice, &library, 1)).await.unwrap().unwrap();
        let tts = std::sync::Arc::new(tts);
        // Six callers, one worker: all are served, none fails for lack of a slot.
        let tasks: Vec<_> = (0..6)
            .map(|k| {
                let tts = tts.clone();
                tokio::spawn(async move { speak(&*tts, &format!("Request number {k} is here."), None).await })
            })
            .collect();
        for task in tasks {
            let spoken = task.await.unwrap().unwrap();
            assert!(spoken.seconds(22_050) > 0.5);
        }
        // Dropping a synthesis mid-way frees the pool for the next caller.
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(tts.synthesize("One. Two. Three. Four. Five. Six. Seven.".into(), None, tx));
        rx.recv().await.unwrap();
        task.abort();
        let _ = task.await;
        drop(rx);
        let after = tokio::time::timeout(Duration::from_secs(10), speak(&*tts, "Still here.", None)).await;
        assert!(!after.expect("the pool is free again").unwrap().frames.is_empty());
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let (voice, library) = model_files();
        let nowhere = Path::new("/nonexistent/models");
        let cases = [
            (PiperTts::load(&nowhere.join("voice.onnx"), &library, 1).err(), "voice.onnx"),
            (PiperTts::load(&voice, &nowhere.join("libonnxruntime.so.1.32.0"), 1).err(), "libonnxruntime.so.1.32.0"),
        ];
        for (err, file) in cases {
            let err = err.expect("loading must fail");
            assert_eq!(err.kind(), "unavailable");
            let msg = err.to_string();
            assert!(msg.contains(file) && msg.contains("voxgate models fetch"), "{msg}");
        }
        // A voice without its JSON beside it.
        let dir = std::env::temp_dir().join(format!("voxgate-tts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lonely = dir.join("voice.onnx");
        std::fs::write(&lonely, b"not a model").unwrap();
        let msg = PiperTts::load(&lonely, &library, 1).err().expect("no JSON").to_string();
        assert!(msg.contains("voice.onnx.json") && msg.contains("voxgate models fetch"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
