//! Speech context reaching the model: a voice session over a real WebSocket, the fake STT scripted
//! with speakers, word times and one unsure word, and fake vendors that record what the model got.
//! The session's `voxgate.transcript_rendering` chooses how a spoken turn is written; the speaker
//! label reaches Anthropic, which has no message `name`, in the text. Time is paused.

use base64::Engine as _;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, events_until as until, next_event as next, start_voxgate, vendors, Recorder, Ws};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The fixtures spoken, in order: the sidecars' words, given speakers A and B, "table" made unsure.
const TURN1: &str = "fixtures/audio/table_booking";
const TURN2: &str = "fixtures/audio/opening_hours";

/// The script for the fake STT, one sidecar per fixture (times count from each WAV's start): the
/// fixtures' words with speakers A and B, and a confidence of 0.35 on "table" (below the 0.5 at
/// which the detailed rendering marks a word).
fn script() -> Vec<String> {
    let dir = support::temp_dir("speech-context");
    [(TURN1, "A"), (TURN2, "B")]
        .into_iter()
        .enumerate()
        .map(|(i, (stem, speaker))| {
            let path = format!("{}/{stem}.json", env!("CARGO_MANIFEST_DIR"));
            let mut sidecar: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let utterance = &mut sidecar["utterances"][0];
            utterance["speaker"] = json!(speaker);
            for word in utterance["words"].as_array_mut().unwrap() {
                if word["text"] == "table" {
                    word["confidence"] = json!(0.35);
                }
            }
            let out = dir.join(format!("turn{i}.json"));
            std::fs::write(&out, sidecar.to_string()).unwrap();
            out.display().to_string()
        })
        .collect()
}

async fn setup() -> (String, Recorder, Recorder) {
    let (openai_url, openai) = vendors::openai::start().await;
    let (anthropic_url, anthropic) = vendors::anthropic::start().await;
    let config = format!(
        r#"
[providers.openai_vendor]
kind = "openai"
base_url = "{openai_url}"
[providers.anthropic_vendor]
kind = "anthropic"
base_url = "{anthropic_url}"
[[models]]
id = "openai-text"
provider = "openai_vendor"
upstream = "text"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "anthropic-text"
provider = "anthropic_vendor"
upstream = "text"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[stt]
engine = "fake"
script = {script:?}
latency_ms = 40
[tts]
engine = "fake"
ttfb_ms = 25
ms_per_char = 20
"#,
        script = script()
    );
    let (base, _) = start_voxgate(&config, &[]).await;
    (base, openai, anthropic)
}

async fn connect(base: &str, model: &str) -> Ws {
    let url = format!("{}/v1/realtime?model={model}", base.replace("http://", "ws://"));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    ws
}

async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string())).await.expect("send");
}

/// Speaks a fixture (as 24 kHz PCM in 100 ms appends, then a second of silence) and waits for the
/// answer to be played; returns the words the client was told the STT heard.
async fn speak(ws: &mut Ws, stem: &str) -> Vec<Value> {
    let path = format!("{}/{stem}.wav", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).unwrap();
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let mut pcm24 = Vec::new();
    let mut resampler = voxgate::audio::Resampler::new(reader.spec().sample_rate, 24_000).unwrap();
    resampler.process(&samples, &mut pcm24);
    resampler.flush(&mut pcm24);
    pcm24.extend(vec![0; 24_000]);
    for chunk in pcm24.chunks(2_400) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        send(ws, json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)})).await;
    }
    let events = until(ws, "response.done").await;
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
    until(ws, "output_audio_buffer.stopped").await;
    let completed = events.iter().find(|e| e["type"] == "conversation.item.input_audio_transcription.completed").unwrap();
    completed["words"].as_array().unwrap().clone()
}

/// `mm:ss.t` of a time in ms, rounded to the tenth, as the detailed rendering writes it.
fn clock(ms: u64) -> String {
    let tenths = (ms + 50) / 100;
    format!("{:02}:{:02}.{}", tenths / 600, tenths % 600 / 10, tenths % 10)
}

#[tokio::test(start_paused = true)]
async fn the_session_setting_chooses_how_spoken_turns_reach_the_model() {
    let (base, openai, _) = setup().await;
    let mut ws = connect(&base, "openai-text").await;
    let created = next(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    assert!(created["session"].get("voxgate").is_none(), "the default rendering is not echoed: {created}");

    send(&mut ws, json!({"type": "session.update", "session": {"voxgate": {"transcript_rendering": "detailed"}}})).await;
    let updated = next(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    assert_eq!(updated["session"]["voxgate"], json!({"transcript_rendering": "detailed"}));

    let words = speak(&mut ws, TURN1).await;
    assert_eq!(words.len(), 13);
    let span = format!("[{}-{}]", clock(words[0]["start_ms"].as_u64().unwrap()), clock(words[12]["end_ms"].as_u64().unwrap()));
    let first_turn = format!("{span} speaker_A: I'd like to book a [table?] for four people tonight at seven thirty");
    let messages = openai.last().body["messages"].clone();
    assert_eq!(messages, json!([{"role": "user", "content": first_turn}]), "no `name`: the label is in the text");

    // Another rendering for the next request: the whole history is written the new way.
    send(&mut ws, json!({"type": "session.update", "session": {"voxgate": {"transcript_rendering": "speaker"}}})).await;
    assert_eq!(next(&mut ws).await["session"]["voxgate"], json!({"transcript_rendering": "speaker"}));
    speak(&mut ws, TURN2).await;
    let messages = openai.last().body["messages"].clone();
    assert_eq!(
        messages,
        json!([
            {"role": "user", "content": "speaker_A: I'd like to book a table for four people tonight at seven thirty."},
            {"role": "assistant", "content": "Hello, world!"},
            {"role": "user", "content": "speaker_B: What time do you open on Sunday?"}
        ])
    );

    // Back to the default: plain text with the speaker as `name`, and the extension is no longer echoed.
    send(&mut ws, json!({"type": "session.update", "session": {"voxgate": {"transcript_rendering": "text"}}})).await;
    let updated = next(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    assert!(updated["session"].get("voxgate").is_none(), "{updated}");
    send(&mut ws, json!({"type": "response.create"})).await;
    until(&mut ws, "response.done").await;
    let messages = openai.last().body["messages"].clone();
    assert_eq!(
        messages[0],
        json!({"role": "user", "name": "speaker_A", "content": "I'd like to book a table for four people tonight at seven thirty."})
    );
    assert_eq!(messages[2], json!({"role": "user", "name": "speaker_B", "content": "What time do you open on Sunday?"}));
}

#[tokio::test(start_paused = true)]
async fn an_unknown_rendering_is_an_error_naming_the_field_and_the_session_goes_on() {
    let (base, openai, _) = setup().await;
    let mut ws = connect(&base, "openai-text").await;
    next(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "session.update", "event_id": "evt_r1", "session": {"instructions": "Be brief.", "voxgate": {"transcript_rendering": "verbose"}}}),
    )
    .await;
    let error = next(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "invalid_value");
    assert_eq!(error["error"]["param"], "session.voxgate.transcript_rendering");
    assert_eq!(error["error"]["event_id"], "evt_r1");
    // A wrong type is refused too, naming the field.
    send(&mut ws, json!({"type": "session.update", "session": {"voxgate": {"transcript_rendering": 2}}})).await;
    let error = next(&mut ws).await;
    assert_eq!((error["type"].as_str(), error["error"]["param"].as_str()), (Some("error"), Some("session.voxgate.transcript_rendering")));

    // Nothing of the refused update was applied, and the session still answers.
    speak(&mut ws, TURN1).await;
    let body = openai.last().body;
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "name": "speaker_A", "content": "I'd like to book a table for four people tonight at seven thirty."}])
    );
}

#[tokio::test(start_paused = true)]
async fn the_speaker_label_reaches_anthropic_in_the_text() {
    let (base, _, anthropic) = setup().await;
    let mut ws = connect(&base, "anthropic-text").await;
    next(&mut ws).await;
    speak(&mut ws, TURN1).await;
    speak(&mut ws, TURN2).await;
    let body = anthropic.last().body;
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "speaker_A: I'd like to book a table for four people tonight at seven thirty."},
            {"role": "assistant", "content": "Hello, world!"},
            {"role": "user", "content": "speaker_B: What time do you open on Sunday?"}
        ])
    );
}
