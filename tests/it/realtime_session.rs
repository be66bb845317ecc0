//! Voice sessions over a real WebSocket: `/v1/realtime` on loopback, fixture audio in, the scripted
//! fake STT and the fake TTS, the gateway in process (fake provider and the fake OpenAI vendor).
//! Time is paused: the session's pacing and the engines' latencies run on tokio's clock.

use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, events_until as until, next_event as next, start_voxgate, vendors, Recorder, Ws, FAKE_ECHO};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The fixture spoken in the first turn, with its sidecar transcript.
const TURN1: &str = "fixtures/audio/table_booking";
/// Spoken in the second turn (and to barge in).
const TURN2: &str = "fixtures/audio/opening_hours";

async fn setup(extra: &str) -> (String, Recorder, std::sync::Arc<voxgate::http::AppState>) {
    setup_with(40, extra).await
}

async fn setup_with(stt_latency_ms: u64, extra: &str) -> (String, Recorder, std::sync::Arc<voxgate::http::AppState>) {
    let (vendor_url, recorder) = vendors::openai::start().await;
    let config = format!(
        r#"
{FAKE_ECHO}[providers.vendor]
kind = "openai"
base_url = "{vendor_url}"
[[models]]
id = "broken"
provider = "fake"
upstream = "error-500"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "vendor-text"
provider = "vendor"
upstream = "text"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "vendor-tool"
provider = "vendor"
upstream = "tool"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "vendor-stall"
provider = "vendor"
upstream = "stall"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[routes.voice]
models = ["echo"]
[routes.fallback]
models = ["broken", "vendor-text"]
[stt]
engine = "fake"
script = ["{TURN1}.json", "{TURN2}.json"]
latency_ms = {stt_latency_ms}
[tts]
engine = "fake"
ttfb_ms = 25
ms_per_char = 20
{extra}
"#
    );
    let (base, state) = start_voxgate(&config, &[]).await;
    (base, recorder, state)
}

async fn connect(base: &str, model: &str) -> Ws {
    let url = format!("{}/v1/realtime?model={model}", base.replace("http://", "ws://"));
    // TCP_NODELAY: small frames must not wait on Nagle (real time) while the test's clock is paused.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    ws
}

async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string())).await.expect("send");
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect()
}

fn of<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// A fixture WAV (16 kHz mono) as 24 kHz PCM16, the Realtime API's `audio/pcm`.
fn fixture_pcm24(stem: &str) -> Vec<i16> {
    let path = format!("{}/{stem}.wav", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let spec = reader.spec();
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let mut out = Vec::new();
    let mut r = voxgate::audio::Resampler::new(spec.sample_rate, 24_000).unwrap();
    r.process(&samples, &mut out);
    r.flush(&mut out);
    out
}

fn fixture_text(stem: &str) -> String {
    let path = format!("{}/{stem}.json", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["utterances"].as_array().unwrap().iter().map(|u| u["text"].as_str().unwrap().to_string()).collect::<Vec<_>>().join(" ")
}

/// Appends audio in 100 ms events, as a client streaming from a microphone does.
async fn append(ws: &mut Ws, pcm24: &[i16]) {
    for chunk in pcm24.chunks(2_400) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        send(ws, json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)})).await;
    }
}

fn silence24(ms: usize) -> Vec<i16> {
    vec![0; ms * 24]
}

fn audio_bytes(events: &[Value]) -> usize {
    of(events, "response.output_audio.delta").iter().map(|e| B64.decode(e["delta"].as_str().unwrap()).unwrap().len()).sum()
}

#[tokio::test(start_paused = true)]
async fn a_spoken_turn_gets_a_spoken_answer() {
    let (base, _, _) = setup("").await;
    let mut ws = connect(&base, "voice").await;
    let created = next(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    assert_eq!(created["session"]["model"], "voice");
    assert_eq!(created["session"]["output_modalities"], json!(["audio"]));
    assert_eq!(created["session"]["audio"]["input"]["format"], json!({"type": "audio/pcm", "rate": 24000}));

    send(&mut ws, json!({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})).await;
    let updated = next(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    assert_eq!(updated["session"]["instructions"], "Be brief.");

    let mut audio = fixture_pcm24(TURN1);
    audio.extend(silence24(1_000));
    append(&mut ws, &audio).await;
    let events = until(&mut ws, "response.done").await;
    let t = types(&events);
    let pos = |name: &str| t.iter().position(|x| *x == name).unwrap_or_else(|| panic!("no {name} in {t:?}"));
    assert!(pos("input_audio_buffer.speech_started") < pos("input_audio_buffer.speech_stopped"));
    assert!(pos("input_audio_buffer.speech_stopped") < pos("input_audio_buffer.committed"));
    assert!(pos("input_audio_buffer.committed") < pos("conversation.item.input_audio_transcription.completed"));
    assert!(pos("conversation.item.input_audio_transcription.completed") < pos("response.created"));
    assert!(pos("response.created") < pos("response.output_audio.delta"));
    assert!(pos("output_audio_buffer.started") < pos("response.output_audio.delta"));

    let heard = fixture_text(TURN1);
    let completed = of(&events, "conversation.item.input_audio_transcription.completed")[0];
    assert_eq!(completed["transcript"], heard.as_str());
    let words = completed["words"].as_array().expect("words extension");
    assert_eq!(words.len(), heard.split_whitespace().count());
    assert!(words.windows(2).all(|w| w[0]["start_ms"].as_u64() <= w[1]["start_ms"].as_u64()));
    assert!(words.iter().all(|w| w["confidence"].as_f64().is_some()));
    // Partial transcripts arrive as deltas that only append, and add up to the final transcript's words.
    let deltas: String =
        of(&events, "conversation.item.input_audio_transcription.delta").iter().map(|e| e["delta"].as_str().unwrap()).collect();
    assert!(heard.starts_with(&deltas), "{deltas:?} is not a prefix of {heard:?}");
    assert_eq!(deltas.split_whitespace().count(), heard.split_whitespace().count());
    let speech_started = of(&events, "input_audio_buffer.speech_started")[0];
    assert_eq!(speech_started["item_id"], completed["item_id"]);

    let done = events.last().unwrap();
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(done["response"]["voxgate"]["model"], "echo");
    let latency = &done["response"]["voxgate"]["latency_ms"];
    for stage in ["stt", "llm_ttft", "tts_ttfb", "voice_to_voice"] {
        assert!(latency[stage].as_f64().is_some(), "no {stage} latency in {latency}");
    }
    // The fake STT answers 40 ms after the utterance ends, the fake TTS 25 ms after its text.
    assert!(latency["stt"].as_f64().unwrap() >= 40.0, "{latency}");
    assert!(latency["tts_ttfb"].as_f64().unwrap() >= 25.0, "{latency}");

    // The answer: what the fake model said, spoken (transcript deltas) and as audio whose length follows it.
    let answer = format!("You said: {heard}");
    let transcript: String = of(&events, "response.output_audio_transcript.delta").iter().map(|e| e["delta"].as_str().unwrap()).collect();
    assert_eq!(transcript, answer);
    assert_eq!(of(&events, "response.output_audio_transcript.done")[0]["transcript"], answer.as_str());
    let chars = answer.chars().filter(|c| !c.is_whitespace()).count();
    let expected_bytes = chars * 20 * 24 * 2; // ms per char × samples per ms × bytes per sample
    let got = audio_bytes(&events);
    assert!(got.abs_diff(expected_bytes) <= expected_bytes / 20, "audio {got} bytes, expected about {expected_bytes}");
    let item = &done["response"]["output"][0];
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["transcript"], answer.as_str());
    assert!(done["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let stopped = next(&mut ws).await;
    assert_eq!(stopped["type"], "output_audio_buffer.stopped");
}

#[tokio::test(start_paused = true)]
async fn two_turns_carry_the_history_to_the_model() {
    let (base, recorder, _) = setup("").await;
    let mut ws = connect(&base, "vendor-text").await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "session.update", "session": {"instructions": "You book tables."}})).await;
    next(&mut ws).await;
    for stem in [TURN1, TURN2] {
        let mut audio = fixture_pcm24(stem);
        audio.extend(silence24(1_000));
        append(&mut ws, &audio).await;
        let events = until(&mut ws, "response.done").await;
        assert_eq!(events.last().unwrap()["response"]["status"], "completed", "{:?}", types(&events));
        until(&mut ws, "output_audio_buffer.stopped").await;
    }
    let request: Value = recorder.last().body;
    let messages = request["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(messages[0]["content"], "You book tables.");
    assert_eq!(messages[1]["content"], fixture_text(TURN1).as_str());
    assert_eq!(messages[2]["content"], "Hello, world!");
    assert_eq!(messages[3]["content"], fixture_text(TURN2).as_str());
    assert_eq!(request["stream"], true);
}

#[tokio::test(start_paused = true)]
async fn a_tool_call_round_trip() {
    let (base, recorder, _) = setup("").await;
    let mut ws = connect(&base, "vendor-tool").await;
    next(&mut ws).await;
    let tool = json!({"type": "function", "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
    send(&mut ws, json!({"type": "session.update", "session": {"tools": [tool], "tool_choice": "auto", "output_modalities": ["text"]}}))
        .await;
    assert_eq!(next(&mut ws).await["type"], "session.updated");
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Weather in Paris?"}]}}),
    )
    .await;
    until(&mut ws, "conversation.item.done").await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = until(&mut ws, "response.done").await;
    let args: String = of(&events, "response.function_call_arguments.delta").iter().map(|e| e["delta"].as_str().unwrap()).collect();
    let done = of(&events, "response.function_call_arguments.done")[0];
    assert_eq!(done["name"], "get_weather");
    assert_eq!(done["arguments"].as_str().unwrap(), args);
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"city": "Paris"}));
    let call_id = done["call_id"].as_str().unwrap().to_string();
    let response = &events.last().unwrap()["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["type"], "function_call");
    assert_eq!(response["output"][0]["call_id"], call_id.as_str());

    // The client runs the tool and asks for the answer, with a per-response model of plain text.
    send(&mut ws, json!({"type": "session.update", "session": {"model": "vendor-text"}})).await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": "{\"temp_c\": 18}"}})).await;
    until(&mut ws, "conversation.item.done").await;
    send(&mut ws, json!({"type": "response.create", "response": {"instructions": "Answer from the tool result."}})).await;
    let events = until(&mut ws, "response.done").await;
    let text: String = of(&events, "response.output_text.delta").iter().map(|e| e["delta"].as_str().unwrap()).collect();
    assert_eq!(text, "Hello, world!", "{events:#?}");
    assert!(of(&events, "response.output_audio.delta").is_empty());

    let request: Value = recorder.last().body;
    let messages = request["messages"].as_array().unwrap();
    assert_eq!(messages[0], json!({"role": "system", "content": "Answer from the tool result."}));
    assert_eq!(messages[2]["tool_calls"][0]["id"], call_id.as_str());
    assert_eq!(messages[2]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(messages[3], json!({"role": "tool", "content": "{\"temp_c\": 18}", "tool_call_id": call_id}));
    assert_eq!(request["tools"][0]["function"]["name"], "get_weather");
}

#[tokio::test(start_paused = true)]
async fn barge_in_cancels_clears_and_truncates() {
    let (base, _, _) = setup("").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    let mut audio = fixture_pcm24(TURN1);
    audio.extend(silence24(1_000));
    append(&mut ws, &audio).await;
    let mut before = until(&mut ws, "response.output_audio.delta").await;
    let response_id = before.last().unwrap()["response_id"].as_str().unwrap().to_string();
    let item_id = before.last().unwrap()["item_id"].as_str().unwrap().to_string();
    // Let a little of the answer play.
    for _ in 0..10 {
        before.push(next(&mut ws).await);
    }
    // The caller talks over the agent.
    append(&mut ws, &fixture_pcm24(TURN2)).await;
    let events = until(&mut ws, "response.done").await;
    let t = types(&events);
    let cleared = t.iter().position(|x| *x == "output_audio_buffer.cleared").unwrap_or_else(|| panic!("no clear in {t:?}"));
    assert!(t.iter().position(|x| *x == "input_audio_buffer.speech_started").unwrap() < cleared);
    assert!(t[cleared + 1..].iter().all(|x| *x != "response.output_audio.delta"), "audio after the clear: {t:?}");
    let done = &events.last().unwrap()["response"];
    assert_eq!(done["id"], response_id.as_str());
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["status_details"]["reason"], "turn_detected");
    let truncated = of(&events, "conversation.item.truncated")[0];
    assert_eq!(truncated["item_id"], item_id.as_str());
    let sent_ms = audio_bytes(&before) as f64 / 48.0 + audio_bytes(&events) as f64 / 48.0;
    let heard_ms = truncated["audio_end_ms"].as_f64().unwrap();
    assert!(heard_ms > 0.0 && heard_ms <= sent_ms, "heard {heard_ms} ms of {sent_ms} ms sent");
    // The item keeps only what was heard: a prefix of the answer, shorter than it.
    let answer = format!("You said: {}", fixture_text(TURN1));
    let kept = done["output"][0]["content"][0]["transcript"].as_str().unwrap();
    assert!(answer.starts_with(kept) && kept.len() < answer.len(), "kept {kept:?} of {answer:?}");
    // No audio of the cancelled response follows: the next events belong to the new turn.
    let after = until(&mut ws, "conversation.item.input_audio_transcription.completed").await;
    assert!(after.iter().all(|e| e["response_id"] != response_id.as_str() || e["type"] != "response.output_audio.delta"));
}

#[tokio::test(start_paused = true)]
async fn manual_commit_mode_waits_for_the_client() {
    let (base, _, _) = setup("").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "session.update", "session": {"audio": {"input": {"turn_detection": null}}}})).await;
    let updated = next(&mut ws).await;
    assert_eq!(updated["session"]["audio"]["input"]["turn_detection"], Value::Null);
    send(&mut ws, json!({"type": "input_audio_buffer.commit", "event_id": "c0"})).await;
    let e = next(&mut ws).await;
    assert_eq!(e["error"]["code"], "input_audio_buffer_commit_empty");
    assert_eq!(e["error"]["event_id"], "c0");

    append(&mut ws, &fixture_pcm24(TURN1)).await;
    send(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;
    let events = until(&mut ws, "conversation.item.input_audio_transcription.completed").await;
    assert!(of(&events, "input_audio_buffer.speech_started").is_empty(), "no VAD in manual mode");
    assert_eq!(of(&events, "input_audio_buffer.committed").len(), 1);
    // No response until the client asks for one.
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = until(&mut ws, "response.done").await;
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
    assert!(of(&events, "response.created").len() == 1);
}

#[tokio::test(start_paused = true)]
async fn text_modality_answers_in_text_only() {
    let (base, _, _) = setup("").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "session.update", "session": {"output_modalities": ["text"]}})).await;
    assert_eq!(next(&mut ws).await["session"]["output_modalities"], json!(["text"]));
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "table for two"}]}}),
    )
    .await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = until(&mut ws, "response.done").await;
    let text: String = of(&events, "response.output_text.delta").iter().map(|e| e["delta"].as_str().unwrap()).collect();
    assert_eq!(text, "You said: table for two");
    assert_eq!(of(&events, "response.output_text.done")[0]["text"], "You said: table for two");
    assert!(of(&events, "response.output_audio.delta").is_empty());
    assert!(of(&events, "output_audio_buffer.started").is_empty());
    assert_eq!(events.last().unwrap()["response"]["output"][0]["content"][0]["type"], "output_text");
}

#[tokio::test(start_paused = true)]
async fn gateway_fallback_works_mid_call() {
    let (base, _, _) = setup("").await;
    let mut ws = connect(&base, "fallback").await;
    next(&mut ws).await;
    let mut audio = fixture_pcm24(TURN1);
    audio.extend(silence24(1_000));
    append(&mut ws, &audio).await;
    let events = until(&mut ws, "response.done").await;
    let response = &events.last().unwrap()["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["voxgate"]["model"], "vendor-text");
    assert_eq!(response["output"][0]["content"][0]["transcript"], "Hello, world!");
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_error_events_and_the_session_goes_on() {
    let (base, _, _) = setup("[realtime]\nmax_event_bytes = 65536\n").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("{not json".into(), "invalid_json", None),
        (json!({"type": "session.dance", "event_id": "e1"}).to_string(), "invalid_value", Some("type")),
        (json!({"type": "input_audio_buffer.append", "event_id": "e2"}).to_string(), "missing_required_parameter", Some("audio")),
        (json!({"type": "input_audio_buffer.append", "event_id": "e3", "audio": "***"}).to_string(), "invalid_audio", Some("audio")),
        (json!({"type": "input_audio_buffer.append", "event_id": "e4", "audio": B64.encode([1u8, 2, 3])}).to_string(), "invalid_audio", Some("audio")),
        (json!({"type": "input_audio_buffer.append", "audio": "A".repeat(70_000)}).to_string(), "event_too_large", None),
        (
            json!({"type": "conversation.item.create", "event_id": "e6", "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"}})
                .to_string(),
            "unknown_call_id",
            Some("item.call_id"),
        ),
        (json!({"type": "conversation.item.delete", "event_id": "e7", "item_id": "item_nope"}).to_string(), "item_not_found", Some("item_id")),
        (json!({"type": "response.cancel", "event_id": "e8"}).to_string(), "response_cancel_not_active", None),
        (
            json!({"type": "session.update", "event_id": "e9", "session": {"audio": {"input": {"format": {"type": "audio/flac"}}}}}).to_string(),
            "invalid_audio_format",
            Some("session.audio.input.format"),
        ),
    ];
    for (text, code, param) in &cases {
        ws.send(Message::text(text.clone())).await.unwrap();
        let e = next(&mut ws).await;
        assert_eq!(e["type"], "error", "{text:.80}: {e}");
        let error = &e["error"];
        assert!(error["code"].as_str().unwrap().contains(code) || error["code"] == *code, "{text:.80}: expected {code}, got {error}");
        if let Some(p) = param {
            assert_eq!(error["param"], *p, "{text:.80}: {error}");
        }
        assert!(!error["message"].as_str().unwrap().is_empty());
        if let Some(id) = serde_json::from_str::<Value>(text).ok().and_then(|v| v["event_id"].as_str().map(str::to_string)) {
            assert_eq!(error["event_id"], id.as_str(), "{text:.80}");
        }
    }
    // A binary frame is refused the same way.
    ws.send(Message::binary(vec![0u8; 16])).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "error");
    // Sent back to back, an unreadable event's error keeps its place after the events of the one
    // before it (the socket answers it, the session the other).
    send(&mut ws, json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]}})).await;
    ws.send(Message::text("{not json")).await.unwrap();
    let order: Vec<Value> = [next(&mut ws).await, next(&mut ws).await, next(&mut ws).await].into();
    assert_eq!(types(&order), ["conversation.item.added", "conversation.item.done", "error"], "{order:?}");

    // response.create while one is active.
    send(&mut ws, json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})).await;
    send(&mut ws, json!({"type": "response.create"})).await;
    send(&mut ws, json!({"type": "response.create", "event_id": "twice"})).await;
    let events = until(&mut ws, "response.done").await;
    let errors = of(&events, "error");
    assert_eq!(errors.len(), 1, "{:?}", types(&events));
    assert_eq!(errors[0]["error"]["code"], "conversation_already_has_active_response");
    assert_eq!(errors[0]["error"]["event_id"], "twice");
    // ...and the session still answers.
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
}

#[tokio::test(start_paused = true)]
async fn a_chunk_longer_than_the_tts_deadline_is_spoken_whole() {
    // The fake voice speaks 20 ms per character: after its first four words this one sentence is
    // one chunk of about 4.5 s of audio, more than the 0.3 s deadline plus what the session buffers
    // (2 s of playback queue and its channels). Delivering it waits for the caller to hear it,
    // which is not the engine being stuck.
    let (base, _, _) = setup("[realtime]\ntts_timeout_ms = 300\n").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    let sentence = "Your table for four people is booked for half past seven tonight near the window by the garden \
                    and we will keep it for you until a quarter past eight in case you are late because of the traffic \
                    on the main road that leads into town from the station on the other side of the river";
    send(&mut ws, json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": sentence}]}})).await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = until(&mut ws, "response.done").await;
    let response = &events.last().unwrap()["response"];
    assert_eq!(response["status"], "completed", "{response}");
    let spoken: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_audio_transcript.delta")
        .map(|e| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(spoken, format!("You said: {sentence}"));
}

// Real time: the session's end waits for the ledger, which works on its own thread.
#[tokio::test]
async fn a_vanished_client_ends_every_task_and_upstream_request() {
    let (base, recorder, state) = setup("").await;
    let mut ws = connect(&base, "vendor-stall").await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})).await;
    send(&mut ws, json!({"type": "response.create"})).await;
    until(&mut ws, "response.created").await;
    assert!(support::eventually(|| recorder.count() == 1).await, "the request reached the vendor");
    assert_eq!(state.sessions.len(), 1);
    drop(ws);
    assert!(support::eventually(|| recorder.dropped_early() == 1).await, "the vendor never saw the upstream close");
    assert!(support::eventually(|| state.sessions.is_empty()).await, "session tasks still running");
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("voxgate_realtime_sessions_active 0"), "{metrics}");
}

#[tokio::test]
async fn the_endpoint_refuses_unknown_routes() {
    let (base, _, _) = setup("").await;
    let url = format!("{}/v1/realtime?model=nope", base.replace("http://", "ws://"));
    let err = tokio_tungstenite::connect_async(url).await.expect_err("unknown route refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), 400);
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "model_not_found");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn g711_in_and_out_and_client_truncation_is_clamped() {
    let (base, _, _) = setup("").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"audio": {
        "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}}),
    )
    .await;
    let updated = next(&mut ws).await;
    assert_eq!(updated["session"]["audio"]["output"]["format"]["type"], "audio/pcmu");
    // The fixture as a phone line sends it: μ-law at 8 kHz, 20 ms (160 bytes) a frame.
    let pcm16k: Vec<i16> = {
        let mut r = hound::WavReader::open(format!("{}/{TURN1}.wav", env!("CARGO_MANIFEST_DIR"))).unwrap();
        r.samples::<i16>().map(|s| s.unwrap()).collect()
    };
    let mut pcm8k = Vec::new();
    let mut down = voxgate::audio::Resampler::new(16_000, 8_000).unwrap();
    down.process(&pcm16k, &mut pcm8k);
    pcm8k.extend(vec![0i16; 8_000]);
    let ulaw: Vec<u8> = pcm8k.iter().map(|&s| voxgate::audio::ulaw_encode(s)).collect();
    for frame in ulaw.chunks(160) {
        send(&mut ws, json!({"type": "input_audio_buffer.append", "audio": B64.encode(frame)})).await;
    }
    let events = until(&mut ws, "response.done").await;
    assert_eq!(of(&events, "conversation.item.input_audio_transcription.completed")[0]["transcript"], fixture_text(TURN1).as_str());
    // μ-law out: one byte per sample at 8 kHz, 20 ms of fake speech per character.
    let answer = format!("You said: {}", fixture_text(TURN1));
    let chars = answer.chars().filter(|c| !c.is_whitespace()).count();
    let got = audio_bytes(&events);
    assert!(got.abs_diff(chars * 20 * 8) <= chars * 8, "μ-law bytes {got} for {chars} characters");
    until(&mut ws, "output_audio_buffer.stopped").await;

    // The client says the caller heard 400 ms, then claims more than exists: clamped to the audio's length.
    let item_id = events.last().unwrap()["response"]["output"][0]["id"].as_str().unwrap().to_string();
    send(&mut ws, json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 400})).await;
    let t = next(&mut ws).await;
    assert_eq!(t["type"], "conversation.item.truncated");
    assert_eq!(t["audio_end_ms"], 400);
    send(&mut ws, json!({"type": "conversation.item.retrieve", "item_id": item_id})).await;
    let kept = next(&mut ws).await["item"]["content"][0]["transcript"].as_str().unwrap().to_string();
    assert!(answer.starts_with(&kept) && kept.len() < answer.len(), "{kept:?}");
    send(&mut ws, json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 999_999})).await;
    let t = next(&mut ws).await;
    assert_eq!(t["type"], "conversation.item.truncated");
    let total_ms = (got / 8) as u64;
    assert!(t["audio_end_ms"].as_u64().unwrap() <= total_ms, "{t} (audio is {total_ms} ms)");
    send(&mut ws, json!({"type": "conversation.item.delete", "item_id": item_id})).await;
    assert_eq!(next(&mut ws).await["type"], "conversation.item.deleted");
    send(&mut ws, json!({"type": "conversation.item.retrieve", "item_id": item_id})).await;
    assert_eq!(next(&mut ws).await["error"]["code"], "item_not_found");
}

#[tokio::test(start_paused = true)]
async fn outbound_audio_is_paced_at_real_time() {
    let (base, _, _) = setup("").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "session.update", "session": {"output_modalities": ["audio"]}})).await;
    next(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "please read me a long confirmation of everything we agreed today"}]}}),
    )
    .await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let mut first: Option<tokio::time::Instant> = None;
    let mut sent_ms = 0.0;
    let mut deltas = 0;
    loop {
        let e = next(&mut ws).await;
        if e["type"] == "response.output_audio.delta" {
            let now = tokio::time::Instant::now();
            let start = *first.get_or_insert(now);
            // Each delta starts at most the lead (100 ms) ahead of real time, and carries at most 60 ms.
            let elapsed_ms = now.duration_since(start).as_secs_f64() * 1000.0;
            assert!(sent_ms <= elapsed_ms + 100.0 + 1.0, "delta {deltas}: {sent_ms} ms of audio sent after {elapsed_ms} ms");
            let delta_ms = B64.decode(e["delta"].as_str().unwrap()).unwrap().len() as f64 / 48.0;
            assert!(delta_ms <= 60.0, "delta {deltas} carries {delta_ms} ms");
            sent_ms += delta_ms;
            deltas += 1;
        }
        if e["type"] == "response.done" {
            break;
        }
    }
    // The whole answer took (nearly) as long to send as to play.
    let elapsed_ms = first.unwrap().elapsed().as_secs_f64() * 1000.0;
    assert!(sent_ms > 1_000.0 && deltas > 15, "{deltas} deltas, {sent_ms} ms");
    // Frames of 20 ms go out together: fewer messages than frames.
    assert!((deltas as f64) < sent_ms / 20.0 / 2.0, "{deltas} deltas for {sent_ms} ms");
    // (The last delta may start the lead ahead and carry 60 ms.)
    assert!(elapsed_ms >= sent_ms - 100.0 - 60.0, "{sent_ms} ms of audio sent in {elapsed_ms} ms");
}

#[tokio::test(start_paused = true)]
async fn a_stuck_stt_engine_fails_the_transcript_and_the_call_goes_on() {
    let (base, _, _) = setup_with(60_000, "[realtime]\nstt_timeout_ms = 2000\n").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    let mut audio = fixture_pcm24(TURN1);
    audio.extend(silence24(1_000));
    append(&mut ws, &audio).await;
    let events = until(&mut ws, "conversation.item.input_audio_transcription.failed").await;
    let failed = events.last().unwrap();
    assert_eq!(failed["error"]["code"], "stt_timeout");
    assert!(of(&events, "response.created").is_empty());
    // Text still works.
    send(&mut ws, json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}})).await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = until(&mut ws, "response.done").await;
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
}

#[tokio::test(start_paused = true)]
async fn a_stuck_tts_engine_fails_the_response_instead_of_dead_air() {
    let (base, _, _) = setup("[realtime]\ntts_timeout_ms = 2000\n").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "session.update", "session": {"audio": {"output": {"voice": "slow-60000"}}}})).await;
    next(&mut ws).await;
    send(&mut ws, json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}})).await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let events = until(&mut ws, "response.done").await;
    let response = &events.last().unwrap()["response"];
    assert_eq!(response["status"], "failed");
    assert_eq!(response["status_details"]["error"]["code"], "tts_failed");
    assert!(response["status_details"]["error"]["message"].as_str().unwrap().contains("2000 ms"));
}

// Real time: the session's end waits for the ledger, which works on its own thread.
#[tokio::test]
async fn server_shutdown_closes_sessions() {
    let (base, _, state) = setup("").await;
    let mut ws = connect(&base, "voice").await;
    next(&mut ws).await;
    state.sessions_cancel.cancel();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed within the deadline") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert!(support::eventually(|| state.sessions.is_empty()).await);
}
