//! `voxgate bench engines`: the embedded speech engines alone, in this process, on the fixtures.
//!
//! - STT (Whisper tiny.en): every fixture is cut into turns as a session cuts them (the default
//!   energy VAD), and each turn is decoded twice. Once as fast as the engine goes (the audio sent
//!   at once, then closed): decode time over audio length is the real-time factor, and the decode
//!   time is how long after the commit a final would take if decoding started at the commit. Once
//!   streamed at real time with pauses reported as a session reports them: the time from the
//!   commit (the silence window closing) to the final, with the decode started at the pause.
//! - TTS (Piper en_US-joe-medium): a few sentences, each synthesised alone: time to the first
//!   audio chunk, whole time, audio length and the real-time factor.
//!
//! One engine runs at a time, with the default worker settings of `voxgate serve`.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::stt::embedded::{WhisperSettings, WhisperStt};
use crate::stt::fake::Sidecar;
use crate::stt::vad::{cut_turns, EnergyVad, VadEvent, VadSettings, PAUSE_MS};
use crate::stt::wer::{wer, WerCount};
use crate::stt::{SpeechToText, Utterance, STT_RATE_HZ};
use crate::tts::TextToSpeech;

/// Sentences the TTS part speaks: a short answer, the 17-word sentence of DESIGN.md, a longer one.
const SENTENCES: [&str; 3] = [
    "Sure.",
    "Your table for four is booked for seven thirty tonight, and we will hold it for fifteen minutes.",
    "The kitchen closes at ten on weekdays and at eleven on Fridays and Saturdays, so there is plenty of time \
     for dessert after the show; would you like me to add a note about the birthday cake to your booking?",
];
/// 20 ms frames at 16 kHz.
const FRAME_SAMPLES: usize = STT_RATE_HZ as usize / 50;

/// One VAD turn of a fixture.
struct Turn {
    name: String,
    reference: Option<String>,
    /// The turn's audio as the session gives it to STT: from `audio_start_ms` to the closing frame.
    samples: Vec<i16>,
}

/// Runs the engine benchmark and returns a Markdown report.
pub async fn engines(models_dir: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    stt(models_dir, &mut out).await?;
    tts(models_dir, &mut out).await?;
    Ok(out)
}

fn fixture_turns() -> anyhow::Result<Vec<Turn>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio");
    let mut wavs: Vec<_> =
        std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "wav")).collect();
    wavs.sort();
    let mut turns = Vec::new();
    for wav in wavs {
        let mut reader = hound::WavReader::open(&wav)?;
        anyhow::ensure!(reader.spec().sample_rate == STT_RATE_HZ, "{} is not 16 kHz", wav.display());
        let samples = reader.samples::<i16>().collect::<Result<Vec<_>, _>>()?;
        let sidecar = Sidecar::load(&wav.with_extension("json")).ok();
        let name = wav.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
        for (ordinal, (start_ms, end)) in cut_turns(&samples, VadSettings::default(), STT_RATE_HZ).into_iter().enumerate() {
            let from = (start_ms * u64::from(STT_RATE_HZ) / 1000) as usize;
            let reference = sidecar.as_ref().and_then(|s| s.utterances.get(ordinal)).map(|u| u.text.clone());
            turns.push(Turn { name: format!("{name} #{}", ordinal + 1), reference, samples: samples[from..end].to_vec() });
        }
    }
    Ok(turns)
}

fn ms(samples: usize) -> f64 {
    samples as f64 * 1000.0 / f64::from(STT_RATE_HZ)
}

/// Decodes `samples` sent at once; returns the transcript and the time from the close to the final.
async fn decode_at_once(stt: &WhisperStt, samples: &[i16]) -> anyhow::Result<(String, Duration)> {
    let (audio_tx, audio_rx) = mpsc::channel(samples.len() / FRAME_SAMPLES + 2);
    let (partials_tx, _partials_rx) = mpsc::channel(1);
    for frame in samples.chunks(FRAME_SAMPLES) {
        audio_tx.send(frame.to_vec()).await?;
    }
    drop(audio_tx);
    let started = Instant::now();
    let transcript = stt.transcribe(Utterance { start_ms: 0, ordinal: 0, audio: audio_rx, pause: None }, partials_tx).await?;
    Ok((transcript.text, started.elapsed()))
}

/// Streams `samples` at real time, reporting pauses as a session does, and closes the audio at the
/// VAD's stop (or at the end); returns the time from the close to the final.
async fn stream_with_pauses(stt: &WhisperStt, samples: &[i16]) -> anyhow::Result<Duration> {
    let (audio_tx, audio_rx) = mpsc::channel(samples.len() / FRAME_SAMPLES + 2);
    let (pause_tx, pause_rx) = watch::channel(None);
    let (partials_tx, _partials_rx) = mpsc::channel(1);
    let job = tokio::spawn(stt.transcribe(Utterance { start_ms: 0, ordinal: 0, audio: audio_rx, pause: Some(pause_rx) }, partials_tx));
    let mut vad = EnergyVad::new(VadSettings::default(), STT_RATE_HZ).report_pauses(PAUSE_MS);
    let epoch = Instant::now();
    let mut sent = 0usize;
    let mut audio_tx = Some(audio_tx);
    'frames: for (i, frame) in samples.chunks(FRAME_SAMPLES).enumerate() {
        tokio::time::sleep_until(epoch + Duration::from_millis(20 * i as u64)).await;
        let mut events = Vec::new();
        vad.push(frame, &mut events);
        let mut cursor = 0;
        for (at, event) in events {
            if let Some(tx) = &audio_tx {
                tx.send(frame[cursor..at].to_vec()).await?;
            }
            sent += at - cursor;
            cursor = at;
            match event {
                VadEvent::SpeechPaused { .. } => {
                    pause_tx.send_replace(Some(sent as u64));
                }
                VadEvent::SpeechResumed => {
                    pause_tx.send_replace(None);
                }
                VadEvent::SpeechStopped { .. } => {
                    audio_tx = None;
                    break 'frames;
                }
                VadEvent::SpeechStarted { .. } => {}
            }
        }
        if let Some(tx) = &audio_tx {
            tx.send(frame[cursor..].to_vec()).await?;
            sent += frame.len() - cursor;
        }
    }
    drop(audio_tx);
    let closed = Instant::now();
    job.await??;
    Ok(closed.elapsed())
}

async fn stt(models_dir: &Path, out: &mut String) -> anyhow::Result<()> {
    let dir = crate::models::whisper_model_dir(models_dir);
    let loading = Instant::now();
    let settings = WhisperSettings { partial_interval_ms: 0, ..WhisperSettings::default() };
    let stt = tokio::task::spawn_blocking(move || WhisperStt::load(&dir, settings)).await??;
    let load_ms = loading.elapsed().as_millis();
    let turns = fixture_turns()?;
    // Warm the engine (first decode allocates).
    if let Some(t) = turns.first() {
        decode_at_once(&stt, &t.samples).await?;
    }
    let _ = writeln!(
        out,
        "### Speech to text: Whisper tiny.en (1 worker × 2 threads, beam 5; model loaded in {load_ms} ms)\n\n\
         Each fixture turn as a session cuts it (default VAD: 300 ms prefix, 500 ms silence window).\n\n\
         | turn | audio ms | decode ms (at once) | real-time factor | commit → final ms, decode started at the pause | WER |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let (mut audio_total, mut decode_total) = (0.0, 0.0);
    let mut words = WerCount::default();
    let mut early_ms = Vec::new();
    for turn in &turns {
        let (text, decode) = decode_at_once(&stt, &turn.samples).await?;
        let streamed = stream_with_pauses(&stt, &turn.samples).await?;
        let audio = ms(turn.samples.len());
        audio_total += audio;
        decode_total += decode.as_secs_f64() * 1000.0;
        early_ms.push(streamed.as_secs_f64() * 1000.0);
        let wer_cell = match &turn.reference {
            Some(r) => {
                let w = wer(r, &text);
                words = words + w;
                format!("{:.0}%", w.rate() * 100.0)
            }
            None => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {audio:.0} | {:.0} | {:.3} | {:.0} | {wer_cell} |",
            turn.name,
            decode.as_secs_f64() * 1000.0,
            decode.as_secs_f64() * 1000.0 / audio,
            streamed.as_secs_f64() * 1000.0
        );
    }
    early_ms.sort_by(f64::total_cmp);
    let stats = stt.stats();
    let _ = writeln!(
        out,
        "\nAll turns: {audio_total:.0} ms of audio decoded in {decode_total:.0} ms, real-time factor {:.3}; word error rate {:.1}%. \
         Commit → final with the decode started at the pause: p50 {:.0} ms, max {:.0} ms. Early finals started {}, used {}, \
         discarded (speech went on) {}.\n",
        decode_total / audio_total.max(1.0),
        words.rate() * 100.0,
        super::pipeline::percentile(&early_ms, 0.5),
        early_ms.last().copied().unwrap_or(f64::NAN),
        stats.early_finals_started,
        stats.early_finals_used,
        stats.early_finals_discarded,
    );
    Ok(())
}

async fn tts(models_dir: &Path, out: &mut String) -> anyhow::Result<()> {
    let voice = crate::models::piper_voice_path(models_dir);
    let library = crate::models::onnxruntime_path(models_dir);
    let loading = Instant::now();
    let tts = tokio::task::spawn_blocking(move || crate::tts::piper::PiperTts::load(&voice, &library, 1)).await??;
    let load_ms = loading.elapsed().as_millis();
    let rate = tts.rate_hz();
    let speak = |text: &'static str| {
        let tts = &tts;
        async move {
            let (tx, mut rx) = mpsc::channel(256);
            let started = Instant::now();
            let job = tokio::spawn(tts.synthesize(text.to_string(), None, tx));
            let mut first = None;
            let mut samples = 0usize;
            while let Some(chunk) = rx.recv().await {
                first.get_or_insert_with(|| started.elapsed());
                samples += chunk.len();
            }
            job.await??;
            anyhow::Ok((first.unwrap_or_default(), started.elapsed(), samples))
        }
    };
    speak(SENTENCES[0]).await?;
    let _ = writeln!(
        out,
        "### Text to speech: Piper en_US-joe-medium ({rate} Hz, 1 worker; voice loaded in {load_ms} ms)\n\n\
         Each sentence synthesised alone, three times; the median run.\n\n\
         | sentence | words | first audio ms | whole ms | audio ms | real-time factor |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for text in SENTENCES {
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(speak(text).await?);
        }
        runs.sort_by_key(|r| r.1);
        let (first, whole, samples) = runs[1];
        let audio_ms = samples as f64 * 1000.0 / f64::from(rate);
        let shown: String = if text.len() > 40 { format!("{}…", &text[..40]) } else { text.to_string() };
        let _ = writeln!(
            out,
            "| {shown} | {} | {:.0} | {:.0} | {audio_ms:.0} | {:.3} |",
            text.split_whitespace().count(),
            first.as_secs_f64() * 1000.0,
            whole.as_secs_f64() * 1000.0,
            whole.as_secs_f64() * 1000.0 / audio_ms.max(1.0)
        );
    }
    Ok(())
}
