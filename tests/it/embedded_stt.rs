//! Whisper tiny.en in process against the WAV fixtures: word error rate over the whole set, silence,
//! partials, and the error for a missing model. The model comes from `$VOXGATE_MODELS_DIR` or
//! `./models`; without it these tests fail and say to run `voxgate models fetch`.
//!
//! Utterances are cut as a session cuts them: the energy VAD (default settings) runs over the file
//! in 20 ms frames, and each turn's audio, from the VAD's `audio_start_ms` (300 ms prefix padding)
//! to the frame where it decided the turn had stopped (500 ms of silence later), is one utterance.
//!
//! The tests use a temporary folder of symbolic links to the model files, so the preprocessor config
//! that `load` writes lands there and not in the shared models folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use voxgate::models::{default_models_dir, whisper_model_dir};
use voxgate::stt::embedded::{WhisperSettings, WhisperStt, MODEL_FILES};
use voxgate::stt::fake::Sidecar;
use voxgate::stt::vad::{cut_turns, EnergyVad, VadEvent, VadSettings, PAUSE_MS};
use voxgate::stt::wer::{wer, WerCount};
use voxgate::stt::{SpeechToText, SttError, Transcript, Utterance, STT_RATE_HZ};

/// Tests that decode share the two cores one at a time, so the real-time factor means something.
static DECODING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A temporary folder of links to the real model files, removed on drop.
struct ModelLinks(PathBuf);

impl ModelLinks {
    fn new(name: &str) -> ModelLinks {
        let real = whisper_model_dir(&default_models_dir());
        let real = std::fs::canonicalize(&real).unwrap_or(real);
        for file in MODEL_FILES {
            assert!(
                real.join(file).is_file(),
                "the Whisper model is missing ({} has no {file}): run `voxgate models fetch` (or set VOXGATE_MODELS_DIR)",
                real.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("voxgate-whisper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for file in MODEL_FILES {
            std::os::unix::fs::symlink(real.join(file), dir.join(file)).unwrap();
        }
        ModelLinks(dir)
    }
}

impl Drop for ModelLinks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(links: &ModelLinks, partial_interval_ms: u64) -> WhisperStt {
    let settings = WhisperSettings { partial_interval_ms, ..WhisperSettings::default() };
    WhisperStt::load(&links.0, settings).unwrap_or_else(|e| panic!("{e}"))
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio");
    let mut wavs: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "wav")).collect();
    wavs.sort();
    wavs
}

fn read(path: &Path) -> Vec<i16> {
    let mut reader = hound::WavReader::open(path).unwrap();
    assert_eq!(reader.spec().sample_rate, STT_RATE_HZ);
    reader.samples::<i16>().collect::<Result<Vec<_>, _>>().unwrap()
}

fn ms_to_sample(ms: u64) -> usize {
    (ms * u64::from(STT_RATE_HZ) / 1000) as usize
}

/// The VAD's turns: (audio_start_ms, the sample index at which the turn was closed).
fn turns(samples: &[i16]) -> Vec<(u64, usize)> {
    cut_turns(samples, VadSettings::default(), STT_RATE_HZ)
}

struct Outcome {
    transcript: Transcript,
    partials: Vec<Transcript>,
    /// From the channel's close to the final.
    latency: Duration,
}

/// Sends `audio` in 20 ms frames; with `pace`, one frame every `pace` (else as fast as possible).
async fn transcribe(stt: &WhisperStt, start_ms: u64, audio: &[i16], pace: Option<Duration>) -> Result<Outcome, SttError> {
    let (audio_tx, audio_rx) = mpsc::channel(4_096);
    let (partials_tx, mut partials_rx) = mpsc::channel(64);
    let job = tokio::spawn(stt.transcribe(Utterance { start_ms, ordinal: 0, audio: audio_rx, pause: None }, partials_tx));
    for frame in audio.chunks(320) {
        audio_tx.send(frame.to_vec()).await.unwrap();
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
    }
    drop(audio_tx);
    let closed = Instant::now();
    let transcript = job.await.unwrap()?;
    let latency = closed.elapsed();
    let mut partials = Vec::new();
    while let Ok(p) = partials_rx.try_recv() {
        partials.push(p);
    }
    Ok(Outcome { transcript, partials, latency })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_error_rate_over_the_fixtures_is_below_15_percent() {
    let _turn = DECODING.lock().await;
    let links = ModelLinks::new("wer");
    let started = Instant::now();
    let stt = load(&links, 0);
    let load_ms = started.elapsed().as_millis();
    assert_eq!(stt.name(), "whisper-tiny-en");

    let mut rows = Vec::new();
    let mut total = WerCount::default();
    let (mut audio_ms_total, mut decode_ms_total) = (0u64, 0u128);
    for wav in fixtures() {
        let sidecar = Sidecar::load(&wav.with_extension("json")).unwrap();
        if sidecar.utterances.is_empty() {
            continue;
        }
        let name = wav.file_stem().unwrap().to_string_lossy().into_owned();
        let samples = read(&wav);
        let reference = sidecar.utterances.iter().map(|u| u.text.as_str()).collect::<Vec<_>>().join(" ");
        let mut heard = Vec::new();
        for (start_ms, end) in turns(&samples) {
            let audio = &samples[ms_to_sample(start_ms)..end];
            let outcome = transcribe(&stt, start_ms, audio, None).await.unwrap();
            let audio_ms = audio.len() as u64 * 1000 / u64::from(STT_RATE_HZ);
            audio_ms_total += audio_ms;
            decode_ms_total += outcome.latency.as_millis();
            // Word times are session times inside the utterance, in order.
            let t = &outcome.transcript;
            let mut previous = start_ms;
            for w in &t.words {
                assert!(previous <= w.start_ms && w.start_ms <= w.end_ms && w.end_ms <= start_ms + audio_ms, "{name}: {w:?} in {t:?}");
                assert!((0.0..=1.0).contains(&w.confidence), "{name}: {w:?}");
                previous = w.start_ms;
            }
            assert!((0.0..=1.0).contains(&t.confidence));
            heard.push(t.text.clone());
        }
        let hypothesis = heard.join(" ");
        let count = wer(&reference, &hypothesis);
        total = total + count;
        rows.push((name, count, reference, hypothesis));
    }
    let rtf = decode_ms_total as f64 / audio_ms_total as f64;
    println!("\n| file | WER | errors / words | reference | Whisper tiny.en heard |");
    println!("| --- | ---: | ---: | --- | --- |");
    for (name, count, reference, hypothesis) in &rows {
        println!("| `{name}` | {:.1}% | {}/{} | {reference} | {hypothesis} |", 100.0 * count.rate(), count.errors, count.reference_words);
    }
    println!("| **all** | **{:.1}%** | {}/{} | | |", 100.0 * total.rate(), total.errors, total.reference_words);
    println!(
        "\nload {load_ms} ms; decoded {audio_ms_total} ms of audio in {decode_ms_total} ms: real-time factor {rtf:.3} \
         (1 worker, 2 threads, beam 5)"
    );
    assert_eq!(rows.len(), 11, "every fixture but the silent one has speech");
    assert!(total.rate() < 0.15, "overall WER {:.1}% is not below 15%", 100.0 * total.rate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_gives_an_empty_transcript() {
    let _turn = DECODING.lock().await;
    let links = ModelLinks::new("silence");
    let stt = load(&links, 700);
    let samples = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/silence.wav"));
    assert!(turns(&samples).is_empty(), "the VAD hears nothing in the silent fixture");
    // A session would not send it, but a manual commit could: the whole file as one utterance.
    let outcome = transcribe(&stt, 0, &samples, None).await.unwrap();
    assert_eq!(outcome.transcript, Transcript::default(), "{:?}", outcome.transcript);
    assert!(outcome.partials.is_empty(), "{:?}", outcome.partials);
    // No audio at all: empty at once.
    let outcome = transcribe(&stt, 0, &[], None).await.unwrap();
    assert_eq!(outcome.transcript, Transcript::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_arrive_for_a_long_utterance_and_the_final_is_at_least_as_good() {
    let _turn = DECODING.lock().await;
    let links = ModelLinks::new("partials");
    let stt = load(&links, 700);
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/order_status.wav");
    let reference = Sidecar::load(&wav.with_extension("json")).unwrap().utterances[0].text.clone();
    let samples = read(&wav);
    // The whole file (6.5 s, two sentences) as one utterance, in real time.
    let outcome = transcribe(&stt, 1_000, &samples, Some(Duration::from_millis(20))).await.unwrap();
    let last = outcome.partials.last().unwrap_or_else(|| panic!("no partials; stats {:?}", stt.stats()));
    println!("partials: {:#?}", outcome.partials.iter().map(|p| p.text.as_str()).collect::<Vec<_>>());
    println!("final: {:?} after {:?}; stats {:?}", outcome.transcript.text, outcome.latency, stt.stats());
    assert!(outcome.partials.len() >= 2, "{:?}", outcome.partials);
    let (final_wer, partial_wer) = (wer(&reference, &outcome.transcript.text), wer(&reference, &last.text));
    assert!(final_wer.errors <= partial_wer.errors, "final {final_wer:?} vs last partial {partial_wer:?}");
    // Partials grow with the audio and are timed in session time.
    assert!(outcome.partials.iter().all(|p| p.words.iter().all(|w| w.start_ms >= 1_000)));
    assert!(outcome.transcript.words.first().is_some_and(|w| w.start_ms >= 1_000 && w.start_ms < 1_900), "{:?}", outcome.transcript);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transcription_is_skipped_and_the_engine_goes_on() {
    let _turn = DECODING.lock().await;
    let links = ModelLinks::new("drop");
    let stt = load(&links, 0);
    let samples = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/opening_hours.wav"));
    // The first final occupies the worker; the second is queued, then abandoned.
    let first = tokio::spawn({
        let stt = stt.clone();
        let samples = samples.clone();
        async move { transcribe(&stt, 0, &samples, None).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (audio_tx, audio_rx) = mpsc::channel(4_096);
    let (partials_tx, _partials_rx) = mpsc::channel(4);
    let abandoned = tokio::spawn(stt.transcribe(Utterance { start_ms: 0, ordinal: 1, audio: audio_rx, pause: None }, partials_tx));
    for frame in samples.chunks(320) {
        audio_tx.send(frame.to_vec()).await.unwrap();
    }
    drop(audio_tx);
    tokio::time::sleep(Duration::from_millis(20)).await;
    abandoned.abort();
    let first = first.await.unwrap().unwrap();
    assert!(wer("What time do you open on Sunday?", &first.transcript.text).rate() < 0.5, "{:?}", first.transcript);
    let third = transcribe(&stt, 0, &samples, None).await.unwrap();
    assert!(!third.transcript.text.is_empty());
    let stats = stt.stats();
    assert_eq!(stats.finals_decoded + stats.jobs_abandoned, 3, "{stats:?}");
    assert_eq!(stats.jobs_failed, 0);
}

/// Waits (a bounded while) until `done` holds for the engine's counters.
async fn until_stats(stt: &WhisperStt, what: &str, done: impl Fn(&voxgate::stt::embedded::WhisperStats) -> bool) {
    for _ in 0..1_000 {
        if done(&stt.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} never happened; stats {:?}", stt.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_started_at_the_pause_is_the_transcript_when_the_turn_ends_there() {
    let _turn = DECODING.lock().await;
    let links = ModelLinks::new("early");
    let stt = load(&links, 0);
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/table_booking.wav");
    let reference = Sidecar::load(&wav.with_extension("json")).unwrap().utterances[0].text.clone();
    let samples = read(&wav);
    // The session's way: the VAD reports pauses, each one is passed on, the stop closes the audio.
    // The utterance opens where the session's would (the turn's start with its prefix padding).
    let (start_ms, _) = turns(&samples)[0];
    let samples = &samples[ms_to_sample(start_ms)..];
    let mut vad = EnergyVad::new(VadSettings::default(), STT_RATE_HZ).report_pauses(PAUSE_MS);
    let (audio_tx, audio_rx) = mpsc::channel(4_096);
    let (pause_tx, pause_rx) = tokio::sync::watch::channel(None);
    let (partials_tx, _partials_rx) = mpsc::channel(64);
    let job = tokio::spawn(stt.transcribe(Utterance { start_ms, ordinal: 0, audio: audio_rx, pause: Some(pause_rx) }, partials_tx));
    let mut audio_tx = Some(audio_tx);
    let (mut sent, mut pauses) = (0u64, 0u64);
    for chunk in samples.chunks(320) {
        let mut events = Vec::new();
        vad.push(chunk, &mut events);
        let mut cursor = 0;
        for (at, event) in events {
            let Some(tx) = &audio_tx else { break };
            tx.send(chunk[cursor..at].to_vec()).await.unwrap();
            sent += (at - cursor) as u64;
            cursor = at;
            match event {
                VadEvent::SpeechPaused { .. } => {
                    pause_tx.send_replace(Some(sent));
                    pauses += 1;
                    until_stats(&stt, "an early final", |s| s.early_finals_started == pauses).await;
                }
                VadEvent::SpeechResumed => {
                    pause_tx.send_replace(None);
                }
                VadEvent::SpeechStopped { .. } => audio_tx = None,
                VadEvent::SpeechStarted { .. } => {}
            }
        }
        if let Some(tx) = &audio_tx {
            tx.send(chunk[cursor..].to_vec()).await.unwrap();
            sent += (chunk.len() - cursor) as u64;
        }
    }
    assert!(audio_tx.is_none(), "the fixture's first turn never stopped");
    let transcript = job.await.unwrap().unwrap();
    let stats = stt.stats();
    println!("{:?}; stats {stats:?}", transcript.text);
    assert!(pauses >= 1);
    assert_eq!(stats.early_finals_used, 1, "{stats:?}");
    assert_eq!(stats.early_finals_discarded, pauses - 1, "{stats:?}");
    // No final was decoded at the close: every final decode was one started at a pause.
    assert_eq!(stats.finals_decoded + stats.jobs_abandoned, pauses, "{stats:?}");
    assert!(wer(&reference, &transcript.text).rate() < 0.25, "{reference:?} vs {:?}", transcript.text);
    assert!(transcript.words.last().is_some_and(|w| w.end_ms > 1_000), "{transcript:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_after_a_pause_makes_the_early_final_a_partial_and_the_whole_turn_is_decoded() {
    let _turn = DECODING.lock().await;
    let links = ModelLinks::new("resumed");
    let stt = load(&links, 0);
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/opening_hours.wav");
    let reference = Sidecar::load(&wav.with_extension("json")).unwrap().utterances[0].text.clone();
    let samples = read(&wav);
    let (start_ms, end) = turns(&samples)[0];
    let turn = &samples[ms_to_sample(start_ms)..end];
    let half = turn.len() / 2;
    let (audio_tx, audio_rx) = mpsc::channel(4_096);
    let (pause_tx, pause_rx) = tokio::sync::watch::channel(None);
    let (partials_tx, mut partials_rx) = mpsc::channel(64);
    let job = tokio::spawn(stt.transcribe(Utterance { start_ms, ordinal: 0, audio: audio_rx, pause: Some(pause_rx) }, partials_tx));
    for frame in turn[..half].chunks(320) {
        audio_tx.send(frame.to_vec()).await.unwrap();
    }
    pause_tx.send_replace(Some(half as u64));
    until_stats(&stt, "an early final", |s| s.early_finals_started == 1).await;
    for frame in turn[half..].chunks(320) {
        audio_tx.send(frame.to_vec()).await.unwrap();
    }
    pause_tx.send_replace(None);
    // The early decode of the first half comes back as a partial (partials are otherwise off).
    let partial = tokio::time::timeout(Duration::from_secs(10), partials_rx.recv()).await.expect("a partial").expect("a partial");
    drop(audio_tx);
    let transcript = job.await.unwrap().unwrap();
    let stats = stt.stats();
    println!("partial {:?}, final {:?}; stats {stats:?}", partial.text, transcript.text);
    assert_eq!((stats.early_finals_used, stats.early_finals_discarded), (0, 1), "{stats:?}");
    assert_eq!(stats.finals_decoded, 2, "the early one and the whole turn: {stats:?}");
    let (final_wer, partial_wer) = (wer(&reference, &transcript.text), wer(&reference, &partial.text));
    assert!(final_wer.rate() < 0.25 && final_wer.errors < partial_wer.errors, "final {final_wer:?}, partial {partial_wer:?}");
}

/// Decoding runs on the engine's own threads: a runtime with a single thread keeps serving other
/// tasks (another session's traffic, here a ping-pong over channels) while a final is decoded.
#[test]
fn decoding_never_blocks_the_async_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let _turn = DECODING.lock().await;
        let links = ModelLinks::new("runtime");
        let stt = load(&links, 0);
        let samples = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/order_status.wav"));
        let decode = tokio::spawn({
            let stt = stt.clone();
            async move { transcribe(&stt, 0, &samples, None).await }
        });
        // Once a worker is decoding, the runtime's one thread must go on running other tasks.
        until_stats(&stt, "the decode to start", |s| s.decoding == 1).await;
        let (ping_tx, mut ping_rx) = mpsc::channel::<u32>(1);
        let (pong_tx, mut pong_rx) = mpsc::channel::<u32>(1);
        tokio::spawn(async move {
            while let Some(n) = ping_rx.recv().await {
                let _ = pong_tx.send(n).await;
            }
        });
        for n in 0..1_000 {
            ping_tx.send(n).await.unwrap();
            assert_eq!(pong_rx.recv().await, Some(n));
        }
        // A thousand round trips take milliseconds; the decode takes hundreds of them.
        let meanwhile = stt.stats();
        let outcome = decode.await.unwrap().unwrap();
        assert!(!outcome.transcript.text.is_empty());
        assert_eq!(
            (meanwhile.decoding, meanwhile.finals_decoded),
            (1, 0),
            "the decode was not running beside the ping-pong: {meanwhile:?}"
        );
    });
}

#[test]
fn a_missing_model_folder_says_to_fetch_the_models() {
    let missing = std::env::temp_dir().join(format!("voxgate-no-whisper-{}", std::process::id()));
    let err = WhisperStt::load(&missing, WhisperSettings::default()).unwrap_err();
    assert!(matches!(err, SttError::Unavailable(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()) && msg.contains("voxgate models fetch"), "{msg}");

    // A folder without the model files says which are missing.
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::write(missing.join("config.json"), "{}").unwrap();
    let err = WhisperStt::load(&missing, WhisperSettings::default()).unwrap_err();
    let _ = std::fs::remove_dir_all(&missing);
    let msg = err.to_string();
    assert!(msg.contains("model.bin") && msg.contains("voxgate models fetch"), "{msg}");
}

#[test]
fn load_writes_the_preprocessor_config_atomically_once() {
    let links = ModelLinks::new("preprocessor");
    let config = links.0.join("preprocessor_config.json");
    assert!(!config.exists());
    let stt = WhisperStt::load(&links.0, WhisperSettings::default()).unwrap_or_else(|e| panic!("{e}"));
    drop(stt);
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(written["feature_size"], 80);
    assert_eq!(written["n_samples"], 480_000);
    let mut names: Vec<String> =
        std::fs::read_dir(&links.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.bin", "preprocessor_config.json", "tokenizer.json", "vocabulary.txt"], "no temp file left");
    // A second load uses the file as it is.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("\"padding_side\"", " \"padding_side\"")).unwrap();
    let before = std::fs::read(&config).unwrap();
    WhisperStt::load(&links.0, WhisperSettings::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read(&config).unwrap(), before);
}
