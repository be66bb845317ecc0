//! The offline defaults, for real: the embedded Piper voice read back by embedded Whisper, a whole
//! spoken session over `/v1/realtime` on the default config (Whisper, SmolLM2, Piper), and
//! `voxgate replay` on the defaults. Needs the models (`voxgate models fetch`, which `.ci/run` does).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use voxgate::stt::SpeechToText;
use voxgate::tts::TextToSpeech;

use crate::support;

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("VOXGATE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    assert!(
        voxgate::models::whisper_model_dir(&dir).join("model.bin").is_file() && voxgate::models::piper_voice_path(&dir).is_file(),
        "the embedded models are not in {}: run `voxgate models fetch` (.ci/run does)",
        dir.display()
    );
    dir
}

/// Sentences a voice agent says, with numbers and names spelled as words so the reference is unambiguous.
const SENTENCES: &[&str] = &[
    "Your table for four is booked for seven thirty tonight.",
    "Your order has shipped and should arrive on Thursday morning.",
    "I can move your appointment to Wednesday afternoon if that works for you.",
    "We open at nine in the morning on Sunday.",
    "Is there anything else I can help you with today?",
    "Please hold while I check the availability for next week.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_speech_read_back_by_whisper_has_word_error_rate_under_10_percent() {
    let dir = models_dir();
    let tts =
        voxgate::tts::piper::PiperTts::load(&voxgate::models::piper_voice_path(&dir), &voxgate::models::onnxruntime_path(&dir), 1).unwrap();
    let stt = voxgate::stt::embedded::WhisperStt::load(&voxgate::models::whisper_model_dir(&dir), Default::default()).unwrap();
    let (mut errors, mut words) = (0usize, 0usize);
    for sentence in SENTENCES {
        let (tx, mut rx) = mpsc::channel(1024);
        let speak = tts.synthesize(sentence.to_string(), None, tx);
        let collect = async {
            let mut audio = Vec::new();
            while let Some(frame) = rx.recv().await {
                audio.extend(frame);
            }
            audio
        };
        let (spoken, audio) = tokio::join!(speak, collect);
        spoken.unwrap();
        assert!(!audio.is_empty(), "no audio for {sentence:?}");
        // Piper speaks at its own rate; Whisper hears 16 kHz.
        let mut pcm16k = Vec::new();
        let mut r = voxgate::audio::Resampler::new(tts.rate_hz(), voxgate::stt::STT_RATE_HZ).unwrap();
        r.process(&audio, &mut pcm16k);
        r.flush(&mut pcm16k);
        let (audio_tx, audio_rx) = mpsc::channel(4);
        audio_tx.send(pcm16k).await.unwrap();
        drop(audio_tx);
        let (partials, _) = mpsc::channel(16);
        let heard =
            stt.transcribe(voxgate::stt::Utterance { start_ms: 0, ordinal: 0, audio: audio_rx, pause: None }, partials).await.unwrap();
        let count = voxgate::stt::wer::wer(sentence, &heard.text);
        let (e, n) = (count.errors, count.reference_words);
        println!("{:>5.1}%  {sentence:?} -> {:?}", 100.0 * e as f64 / n.max(1) as f64, heard.text);
        errors += e;
        words += n;
    }
    let wer = errors as f64 / words as f64;
    println!("overall word error rate {:.1}% ({errors} errors in {words} words)", 100.0 * wer);
    assert!(wer < 0.10, "word error rate {:.1}% is not under 10%", 100.0 * wer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_session_on_the_offline_defaults_gets_a_spoken_answer() {
    let dir = models_dir();
    let config = format!("models_dir = {:?}\n", dir.display().to_string());
    let (base, state) = support::start_voxgate(&config, &[]).await;
    assert!(state.voice.stt.is_some() && state.voice.tts.is_some(), "the defaults include speech engines");
    let url = format!("{}/v1/realtime?model=default", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let created = recv(&mut ws).await;
    assert_eq!(created["session"]["audio"]["input"]["transcription"]["model"], "whisper-tiny-en");
    assert_eq!(created["session"]["output_modalities"], json!(["audio"]));
    // A short answer keeps the paced reply short.
    ws.send(Message::text(json!({"type": "session.update", "session": {"max_output_tokens": 24}}).to_string())).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "session.updated");

    let path = format!("{}/fixtures/audio/table_booking.wav", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).unwrap();
    let pcm16k: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let mut pcm24k = Vec::new();
    let mut r = voxgate::audio::Resampler::new(16_000, 24_000).unwrap();
    r.process(&pcm16k, &mut pcm24k);
    pcm24k.extend(vec![0i16; 24_000]);
    for chunk in pcm24k.chunks(2_400) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        let event = json!({"type": "input_audio_buffer.append", "audio": base64::engine::general_purpose::STANDARD.encode(bytes)});
        ws.send(Message::text(event.to_string())).await.unwrap();
    }
    let mut transcript = None;
    let mut audio_bytes = 0usize;
    let done = loop {
        let e = recv(&mut ws).await;
        match e["type"].as_str().unwrap() {
            "conversation.item.input_audio_transcription.completed" => transcript = Some(e["transcript"].as_str().unwrap().to_string()),
            "response.output_audio.delta" => {
                audio_bytes += base64::engine::general_purpose::STANDARD.decode(e["delta"].as_str().unwrap()).unwrap().len()
            }
            "error" => panic!("error event: {e}"),
            "response.done" => break e,
            _ => {}
        }
    };
    let transcript = transcript.expect("a transcript");
    assert!(transcript.to_lowercase().contains("table"), "{transcript:?}");
    let response = &done["response"];
    assert!(["completed", "incomplete"].contains(&response["status"].as_str().unwrap()), "{response}");
    assert_eq!(response["voxgate"]["model"], "smollm2-135m-instruct");
    assert!(audio_bytes > 24_000, "only {audio_bytes} bytes of reply audio");
    let spoken = response["output"][0]["content"][0]["transcript"].as_str().unwrap();
    assert!(!spoken.trim().is_empty());
}

async fn recv(ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("an event within 120 s")
            .expect("socket open")
            .expect("frame")
        {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

#[test]
fn replay_on_the_defaults_prints_transcript_answer_and_writes_audio() {
    let dir = models_dir();
    let out = std::env::temp_dir().join(format!("voxgate-offline-replay-{}.wav", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_voxgate"))
        .current_dir(std::env::temp_dir())
        .args(["replay", &format!("{}/fixtures/audio/opening_hours.wav", env!("CARGO_MANIFEST_DIR")), "--json", "--out"])
        .arg(&out)
        .env("VOXGATE_MODELS_DIR", &dir)
        .env("VOXGATE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let heard = report["transcripts"][0].as_str().expect("a transcript").to_lowercase();
    assert!(heard.contains("open") && heard.contains("sunday"), "{heard:?}");
    assert!(!report["answers"][0].as_str().unwrap().trim().is_empty(), "{report}");
    assert_eq!(report["responses"][0]["model"], "smollm2-135m-instruct");
    let reader = hound::WavReader::open(&out).expect("reply audio written");
    assert!(reader.duration() > 24_000 / 2, "reply shorter than half a second");
    let _ = std::fs::remove_file(&out);
}
