//! Hosted speech-to-text: every streaming adapter (Deepgram, AssemblyAI, OpenAI) through a real
//! `/v1/realtime` session against a fake vendor that speaks its wire format
//! (`tests/support/speech_stt.rs`), and the fallback list's triggers. Time is paused.

use std::time::Duration;

use base64::Engine as _;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::speech_stt::{self, booking_script, FakeVendor, Flavour};
use crate::support::{self, events_until as until, next_event as next, start_voxgate, Ws, FAKE_ECHO};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn kind(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Deepgram => "deepgram",
        Flavour::AssemblyAi => "assemblyai",
        Flavour::OpenAi => "openai",
    }
}

fn key(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Deepgram => "dg-SECRET-1",
        Flavour::AssemblyAi => "aai-SECRET-2",
        Flavour::OpenAi => "sk-oa-SECRET-3",
    }
}

/// A `[providers.NAME]` entry for a fake vendor.
fn provider(name: &str, flavour: Flavour, vendor: &FakeVendor) -> String {
    format!("[providers.{name}]\nkind = \"{}\"\nbase_url = \"{}\"\napi_key = \"{}\"\n", kind(flavour), vendor.url, key(flavour))
}

/// voxgate with the fake echo model, no TTS, and `[stt]` as given after `providers`.
async fn voxgate(providers: &str, stt: &str) -> String {
    let config = format!("{FAKE_ECHO}{providers}[routes.voice]\nmodels = [\"echo\"]\n[stt]\n{stt}\n[tts]\nengine = \"none\"\n");
    start_voxgate(&config, &[]).await.0
}

async fn connect(base: &str) -> Ws {
    let url = format!("{}/v1/realtime?model=voice", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    next(&mut ws).await; // session.created
    ws
}

/// `ms` of 24 kHz audio: a 440 Hz tone (speech to the detectors) or silence.
fn audio(ms: usize, loud: bool) -> Vec<i16> {
    let amplitude = if loud { 8_000.0 } else { 0.0 };
    (0..ms * 24).map(|i| (amplitude * (i as f64 * 440.0 * std::f64::consts::TAU / 24_000.0).sin()) as i16).collect()
}

/// Speaks one turn in 20 ms appends: silence, 1.5 s of "speech", a second of silence.
async fn speak(ws: &mut Ws, lead_ms: usize) {
    let mut pcm = audio(lead_ms, false);
    pcm.extend(audio(1_500, true));
    pcm.extend(audio(1_000, false));
    for chunk in pcm.chunks(480) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        let event = json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)});
        ws.send(Message::text(event.to_string())).await.expect("send");
    }
}

/// As [`speak`], at real time: a 20 ms frame every 20 ms, as a microphone sends them.
async fn speak_paced(ws: &mut Ws, lead_ms: usize) {
    let mut pcm = audio(lead_ms, false);
    pcm.extend(audio(1_500, true));
    pcm.extend(audio(1_000, false));
    for chunk in pcm.chunks(480) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        let event = json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)});
        ws.send(Message::text(event.to_string())).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first speech start and the first completed transcript of a spoken turn.
async fn one_turn(ws: &mut Ws) -> (Value, Value) {
    let (started, completed, _) = one_turn_with_deltas(ws).await;
    (started, completed)
}

/// [`one_turn`], with the turn's `transcription.delta` events.
async fn one_turn_with_deltas(ws: &mut Ws) -> (Value, Value, Vec<Value>) {
    speak(ws, 500).await;
    let events = until(ws, "conversation.item.input_audio_transcription.completed").await;
    let started = events.iter().find(|e| e["type"] == "input_audio_buffer.speech_started").expect("speech started").clone();
    let deltas = events.iter().filter(|e| e["type"] == "conversation.item.input_audio_transcription.delta").cloned().collect();
    (started, events.last().unwrap().clone(), deltas)
}

fn texts(completed: &Value) -> Vec<&str> {
    completed["words"].as_array().unwrap().iter().map(|w| w["text"].as_str().unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn every_vendor_transcribes_a_turn_with_its_own_words_times_confidences_and_speaker() {
    for flavour in [Flavour::Deepgram, Flavour::AssemblyAi, Flavour::OpenAi] {
        let vendor = speech_stt::start(flavour, booking_script()).await;
        let base = voxgate(&provider("v", flavour, &vendor), "engines = [\"v\"]").await;
        let mut ws = connect(&base).await;
        let (started, completed, deltas) = one_turn_with_deltas(&mut ws).await;
        let what = format!("{flavour:?}: {completed}");
        assert_eq!(completed["transcript"], "book a table for two", "{what}");
        assert_eq!(texts(&completed), ["book", "a", "table", "for", "two"], "{what}");
        assert_eq!(completed["engine"], "v", "{what}");
        let words = completed["words"].as_array().unwrap();
        let connection = &vendor.connections()[0];
        match flavour {
            Flavour::Deepgram | Flavour::AssemblyAi => {
                // The vendor's own confidences, and its times moved onto the session's timeline by
                // where the utterance's audio began: the item's audio_start_ms.
                for (w, expected) in words.iter().zip([0.91, 0.42, 0.88, 0.8, 0.77]) {
                    assert!((w["confidence"].as_f64().unwrap() - expected).abs() < 1e-6, "{what}");
                }
                let origin = started["audio_start_ms"].as_u64().unwrap();
                let vendor_words = vendor_final_words(flavour, &connection.sent);
                assert_eq!(vendor_words.len(), 5, "{what}");
                for (w, (start, end)) in words.iter().zip(vendor_words) {
                    assert_eq!(w["start_ms"].as_u64().unwrap(), origin + start, "{what}");
                    assert_eq!(w["end_ms"].as_u64().unwrap(), origin + end, "{what}");
                }
                // The tone began 500 ms in: so does the first word, within the detectors' 10 ms windows.
                let first = words[0]["start_ms"].as_u64().unwrap();
                assert!((490..=530).contains(&first), "{what}");
                let speaker = if flavour == Flavour::Deepgram { "1" } else { "B" };
                assert_eq!(completed["speaker"], speaker, "{what}");
                // Partials too: every word of every delta is a word of one of the vendor's interim
                // results, with its own times (moved by the same origin) and confidence.
                let interim = vendor_interim_words(flavour, &connection.sent);
                assert!(!interim.is_empty(), "{what}: the fake sent interim results");
                let delta_words: Vec<&Value> = deltas.iter().filter_map(|d| d["words"].as_array()).flatten().collect();
                assert!(!delta_words.is_empty(), "{flavour:?}: the deltas carry words");
                for w in delta_words {
                    let heard = (
                        w["text"].as_str().unwrap().to_string(),
                        w["start_ms"].as_u64().unwrap() - origin,
                        w["end_ms"].as_u64().unwrap() - origin,
                        w["confidence"].as_f64().unwrap(),
                    );
                    assert!(
                        interim.iter().any(|v| v.0 == heard.0 && v.1 == heard.1 && v.2 == heard.2 && (v.3 - heard.3).abs() < 1e-6),
                        "{flavour:?}: delta word {heard:?} is none of the vendor's interim words {interim:?}"
                    );
                }
            }
            Flavour::OpenAi => {
                // No word times from this vendor: the words share the utterance's audio, in order.
                let starts: Vec<u64> = words.iter().map(|w| w["start_ms"].as_u64().unwrap()).collect();
                assert!(starts.windows(2).all(|p| p[0] < p[1]), "{what}");
                // One confidence for all: the mean token probability the vendor sent.
                let mean_ln = [0.91f64, 0.42, 0.88, 0.8, 0.77].iter().map(|c| c.ln()).sum::<f64>() / 5.0;
                assert!((words[0]["confidence"].as_f64().unwrap() - mean_ln.exp()).abs() < 1e-3, "{what}");
                assert!(completed.get("speaker").is_none(), "{what}");
            }
        }
        let path = match flavour {
            Flavour::Deepgram => "/v1/listen",
            Flavour::AssemblyAi => "/v3/ws",
            Flavour::OpenAi => "/v1/realtime",
        };
        assert_eq!(connection.path, path);
        // The key went in the vendor's header, and the audio as the vendor takes it.
        let auth = connection.header("authorization").unwrap_or_default().to_string();
        let expected = match flavour {
            Flavour::Deepgram => format!("Token {}", key(flavour)),
            Flavour::AssemblyAi => key(flavour).to_string(),
            Flavour::OpenAi => format!("Bearer {}", key(flavour)),
        };
        assert_eq!(auth, expected, "{flavour:?}");
        match flavour {
            Flavour::Deepgram => {
                assert!(connection.query.contains("encoding=linear16&sample_rate=16000") && connection.query.contains("diarize=true"))
            }
            Flavour::AssemblyAi => {
                assert!(connection.query.contains("sample_rate=16000") && connection.query.contains("speaker_labels=true"));
                // Frames of at least 50 ms.
                assert!(connection.audio_samples >= connection.audio_messages as u64 * 800, "{connection:?}");
            }
            Flavour::OpenAi => assert!(connection.texts[0].contains("\"transcription\"")),
        }
        // The call ends: the vendor is told as it asks, and the socket closes.
        ws.close(None).await.unwrap();
        assert!(support::eventually(|| vendor.connections()[0].ended).await, "{flavour:?}: the vendor socket closes");
        let connection = &vendor.connections()[0];
        if flavour != Flavour::OpenAi {
            assert!(connection.closed_politely, "{flavour:?}: CloseStream / Terminate before the close");
        }
        assert_eq!(vendor.connections().len(), 1, "{flavour:?}: one socket for the call");
    }
}

/// (text, start, end, confidence) of the words the fake sent in interim results, in the vendor's
/// clock: Deepgram's `is_final: false` Results and AssemblyAI's Turns before the end of turn.
fn vendor_interim_words(flavour: Flavour, sent: &[Value]) -> Vec<(String, u64, u64, f64)> {
    let mut out = Vec::new();
    for m in sent {
        let (words, text, seconds) = match flavour {
            Flavour::Deepgram if m["type"] == "Results" && m["is_final"] == false => {
                (&m["channel"]["alternatives"][0]["words"], "word", true)
            }
            Flavour::AssemblyAi if m["type"] == "Turn" && m["end_of_turn"] == false => (&m["words"], "text", false),
            _ => continue,
        };
        for w in words.as_array().unwrap() {
            let ms = |v: &Value| if seconds { (v.as_f64().unwrap() * 1000.0).round() as u64 } else { v.as_u64().unwrap() };
            out.push((w[text].as_str().unwrap().to_string(), ms(&w["start"]), ms(&w["end"]), w["confidence"].as_f64().unwrap()));
        }
    }
    out
}

/// (start, end) ms of the words the fake sent as final, in the vendor's clock.
fn vendor_final_words(flavour: Flavour, sent: &[Value]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for m in sent {
        match flavour {
            Flavour::Deepgram if m["type"] == "Results" && m["is_final"] == true => {
                for w in m["channel"]["alternatives"][0]["words"].as_array().unwrap() {
                    let ms = |s: &Value| (s.as_f64().unwrap() * 1000.0).round() as u64;
                    out.push((ms(&w["start"]), ms(&w["end"])));
                }
            }
            Flavour::AssemblyAi if m["type"] == "Turn" && m["end_of_turn"] == true && !m["words"].as_array().unwrap().is_empty() => {
                out = m["words"].as_array().unwrap().iter().map(|w| (w["start"].as_u64().unwrap(), w["end"].as_u64().unwrap())).collect();
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn two_turns_share_one_socket_kept_alive_between_them() {
    for flavour in [Flavour::Deepgram, Flavour::AssemblyAi] {
        let vendor = speech_stt::start(flavour, booking_script()).await;
        let base = voxgate(&provider("v", flavour, &vendor), "engines = [\"v\"]").await;
        let mut ws = connect(&base).await;
        let (_, first) = one_turn(&mut ws).await;
        assert_eq!(first["transcript"], "book a table for two");
        // Nobody speaks for 20 s: the socket is kept open.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let keepalives = vendor.connections()[0].count("KeepAlive");
        assert!(keepalives >= 3, "{flavour:?}: {keepalives} keepalives in 20 s: {:?}", vendor.connections()[0]);
        let (started, second) = one_turn(&mut ws).await;
        assert_eq!(second["transcript"], "at seven", "{flavour:?}");
        let speaker = if flavour == Flavour::Deepgram { "0" } else { "A" };
        assert_eq!(second["speaker"], speaker);
        // The second utterance's words sit on the session's timeline, after the pause.
        let origin = started["audio_start_ms"].as_u64().unwrap();
        let first_word = second["words"][0]["start_ms"].as_u64().unwrap();
        assert!(first_word >= origin && first_word <= origin + 520, "{flavour:?}: {origin} {first_word}");
        assert_eq!(vendor.connections().len(), 1, "{flavour:?}: one socket for the call");
        assert!(!vendor.connections()[0].ended);
    }
}

/// voxgate with `[stt] engines = [first, "backup"]`, the backup an AssemblyAI fake.
async fn with_backup(first: &str, first_vendor: &FakeVendor, backup: &FakeVendor, extra: &str) -> String {
    let providers = format!("{}{}", provider("dg", Flavour::Deepgram, first_vendor), provider("backup", Flavour::AssemblyAi, backup));
    voxgate(&providers, &format!("engines = [\"{first}\", \"backup\"]\n{extra}")).await
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_vendor_cut_mid_utterance_hands_the_whole_utterance_to_the_next_engine() {
    let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    let backup = speech_stt::start(Flavour::AssemblyAi, booking_script()).await;
    let base = with_backup("dg:cut", &dg, &backup, "").await;
    let mut ws = connect(&base).await;
    let (started, completed) = one_turn(&mut ws).await;
    assert_eq!(completed["transcript"], "book a table for two", "{completed}");
    assert_eq!(completed["engine"], "backup");
    // Deepgram closed 300 ms into the speech; the backup heard the utterance from its first frame:
    // the speech began as far into its audio as into Deepgram's, and it heard all of it.
    let (dg, backup) = (dg.connections()[0].clone(), backup.connections()[0].clone());
    assert_eq!(dg.speech_began_ms, backup.speech_began_ms, "the backup got the prefix padding too");
    assert!(backup.audio_samples > dg.audio_samples + 16 * 1_000, "{} vs {}", backup.audio_samples, dg.audio_samples);
    let first = completed["words"][0]["start_ms"].as_u64().unwrap();
    assert!((490..=530).contains(&first), "{first}");
    assert_eq!(started["audio_start_ms"].as_u64().unwrap() + vendor_final_words(Flavour::AssemblyAi, &backup.sent)[0].0, first);
    let m = metrics(&base).await;
    let m: String = m.lines().filter(|l| l.contains("speech")).collect::<Vec<_>>().join("\n");
    assert!(m.contains(r#"voxgate_speech_fallbacks_total{stage="stt",from="dg",reason="engine"} 1"#), "{m}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_slow_stalled_or_garbled_vendor_falls_back_and_the_client_sees_no_error() {
    for (model, reason) in [("reject", "engine"), ("slow", "engine"), ("stall", "stalled"), ("malformed", "engine")] {
        let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
        let backup = speech_stt::start(Flavour::AssemblyAi, booking_script()).await;
        let base = with_backup(&format!("dg:{model}"), &dg, &backup, "").await;
        let mut ws = connect(&base).await;
        speak(&mut ws, 500).await;
        let events = until(&mut ws, "conversation.item.input_audio_transcription.completed").await;
        assert!(events.iter().all(|e| e["type"] != "error"), "{model}: {events:?}");
        let completed = events.last().unwrap();
        assert_eq!(completed["transcript"], "book a table for two", "{model}: {completed} {:?}", backup.connections());
        assert_eq!(completed["engine"], "backup", "{model}");
        let m = metrics(&base).await;
        let line = format!(r#"voxgate_speech_fallbacks_total{{stage="stt",from="dg",reason="{reason}"}} 1"#);
        assert!(m.contains(&line), "{model}: {m}");
    }
}

#[tokio::test(start_paused = true)]
async fn when_every_engine_fails_the_transcript_fails_and_the_call_goes_on() {
    let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    let base = voxgate(&provider("dg", Flavour::Deepgram, &dg), "engines = [\"dg:reject\"]").await;
    let mut ws = connect(&base).await;
    speak(&mut ws, 500).await;
    let events = until(&mut ws, "conversation.item.input_audio_transcription.failed").await;
    let failed = events.last().unwrap();
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("429"), "{failed}");
    assert!(!message.contains(key(Flavour::Deepgram)), "{failed}");
    // Text still works.
    let item = json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}});
    ws.send(Message::text(item.to_string())).await.unwrap();
    ws.send(Message::text(json!({"type": "response.create"}).to_string())).await.unwrap();
    let events = until(&mut ws, "response.done").await;
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
}

#[tokio::test(start_paused = true)]
async fn a_broken_vendor_is_skipped_by_later_calls_until_its_breaker_lets_a_probe_through() {
    let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    let backup = speech_stt::start(Flavour::AssemblyAi, booking_script()).await;
    let base = with_backup("dg:reject", &dg, &backup, "").await;
    for call in 0..5 {
        let mut ws = connect(&base).await;
        let (_, completed) = one_turn(&mut ws).await;
        assert_eq!(completed["engine"], "backup", "call {call}");
    }
    // Three failures open the breaker: the last two calls went straight to the backup.
    assert_eq!(dg.connections().len(), 3);
    assert_eq!(backup.connections().len(), 5);
    // After the cooldown, one call probes the vendor again.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let mut ws = connect(&base).await;
    one_turn(&mut ws).await;
    assert_eq!(dg.connections().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_client_picks_an_engine_of_the_list_by_its_transcription_model() {
    let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    let backup = speech_stt::start(Flavour::AssemblyAi, booking_script()).await;
    let base = with_backup("dg", &dg, &backup, "").await;
    // The first engine by default; the session reports it.
    let mut ws = connect(&base).await;
    let update = |model: &str| json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"transcription": {"model": model}}}}});
    ws.send(Message::text(update("whisper-1").to_string())).await.unwrap();
    let updated = next(&mut ws).await;
    assert_eq!(updated["session"]["audio"]["input"]["transcription"]["model"], "whisper-1", "{updated}");
    let (_, completed) = one_turn(&mut ws).await;
    assert_eq!(completed["engine"], "dg", "a name the list does not know changes nothing");
    // Named: that engine serves the rest of the call, the others stay its fallbacks.
    ws.send(Message::text(update("backup").to_string())).await.unwrap();
    next(&mut ws).await;
    let (_, completed) = one_turn(&mut ws).await;
    assert_eq!(completed["engine"], "backup");
    assert_eq!(completed["transcript"], "book a table for two", "the backup's first line");
    assert_eq!((dg.connections().len(), backup.connections().len()), (1, 1));
    // The call's Deepgram socket was let go when the client chose another engine.
    assert!(support::eventually(|| dg.connections()[0].closed_politely).await);
}

#[tokio::test(start_paused = true)]
async fn a_turn_the_vendor_already_ended_is_final_when_the_session_ends_it() {
    // Deepgram's endpointing (300 ms) ends the turn before the session's silence window (500 ms)
    // does, and its Finalize then has nothing to answer: the transcript must not wait for a
    // quiet spell on top.
    let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    let base = voxgate(&provider("dg", Flavour::Deepgram, &dg), "engines = [\"dg\"]").await;
    let mut ws = connect(&base).await;
    speak_paced(&mut ws, 500).await;
    let events = until(&mut ws, "conversation.item.input_audio_transcription.completed").await;
    assert_eq!(events.last().unwrap()["transcript"], "book a table for two");
    // The server's own measure, end of speech to final transcript on its (paused) clock: the
    // silence window (500 ms) and nothing more; waiting for a quiet vendor would add a second.
    let m = metrics(&base).await;
    let within = |le: &str| m.contains(&format!("voxgate_turn_latency_seconds_bucket{{stage=\"stt\",le=\"{le}\"}} 1"));
    assert!(within("0.5") && !within("0.25"), "{m}");
    assert_eq!(dg.connections()[0].count("Finalize"), 1);
    assert!(dg.connections()[0].sent.iter().all(|m| m["from_finalize"] != true), "the endpoint said it all");
}

#[tokio::test(start_paused = true)]
async fn a_vendor_that_answers_only_when_asked_is_not_stalled_by_a_long_utterance() {
    // OpenAI's transcribe models say nothing until the commit: an utterance longer than
    // stall_ms_max is not a stall.
    let oa = speech_stt::start(Flavour::OpenAi, booking_script()).await;
    let base = voxgate(&provider("oa", Flavour::OpenAi, &oa), "engines = [\"oa\"]\nstall_ms_max = 1000").await;
    let mut ws = connect(&base).await;
    speak_paced(&mut ws, 500).await;
    let events = until(&mut ws, "conversation.item.input_audio_transcription.completed").await;
    assert_eq!(events.last().unwrap()["transcript"], "book a table for two");
    assert!(events.iter().all(|e| e["type"] != "conversation.item.input_audio_transcription.failed"));
}

#[tokio::test(start_paused = true)]
async fn the_vendor_can_decide_the_callers_turns() {
    for flavour in [Flavour::Deepgram, Flavour::AssemblyAi] {
        let vendor = speech_stt::start(flavour, booking_script()).await;
        let base = voxgate(&provider("v", flavour, &vendor), "engines = [\"v\"]").await;
        let mut ws = connect(&base).await;
        let update =
            json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "vendor"}}}}});
        ws.send(Message::text(update.to_string())).await.unwrap();
        let updated = next(&mut ws).await;
        assert_eq!(updated["session"]["audio"]["input"]["turn_detection"]["type"], "vendor", "{updated}");
        speak_paced(&mut ws, 500).await;
        let events = until(&mut ws, "response.done").await;
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let at = |t: &str| kinds.iter().position(|k| *k == t).unwrap_or_else(|| panic!("{flavour:?}: no {t} in {kinds:?}"));
        // The Realtime events a client knows, in their usual order: the vendor's words started
        // the speech, its end of turn stopped it, committed it and answered it.
        assert!(at("input_audio_buffer.speech_started") < at("input_audio_buffer.speech_stopped"), "{kinds:?}");
        assert!(at("input_audio_buffer.speech_stopped") < at("input_audio_buffer.committed"), "{kinds:?}");
        assert!(at("conversation.item.input_audio_transcription.completed") < at("response.created"), "{kinds:?}");
        let started = &events[at("input_audio_buffer.speech_started")];
        let stopped = &events[at("input_audio_buffer.speech_stopped")];
        let completed = &events[at("conversation.item.input_audio_transcription.completed")];
        assert_eq!(completed["transcript"], "book a table for two", "{flavour:?}");
        let words = completed["words"].as_array().unwrap();
        assert_eq!(started["audio_start_ms"], words[0]["start_ms"], "{flavour:?}");
        assert_eq!(stopped["audio_end_ms"], words[4]["end_ms"], "{flavour:?}");
        assert!((490..=530).contains(&started["audio_start_ms"].as_u64().unwrap()), "{started}");
        assert_eq!(events.last().unwrap()["response"]["status"], "completed");
        // The session never asked the vendor to finish: the vendor ended the turn.
        let finishes = vendor.connections()[0].count("Finalize") + vendor.connections()[0].count("ForceEndpoint");
        assert_eq!(finishes, 0, "{flavour:?}");
        // A second turn on the same socket.
        speak_paced(&mut ws, 300).await;
        let events = until(&mut ws, "conversation.item.input_audio_transcription.completed").await;
        assert_eq!(events.last().unwrap()["transcript"], "at seven", "{flavour:?}");
        assert_eq!(vendor.connections().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn turn_detection_by_a_vendor_that_cannot_end_turns_is_refused() {
    let oa = speech_stt::start(Flavour::OpenAi, booking_script()).await;
    let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    let providers = format!("{}{}", provider("oa", Flavour::OpenAi, &oa), provider("dg", Flavour::Deepgram, &dg));
    // OpenAI's turn detection is off (the session commits), and a list whose fallback is the
    // scripted fake would leave a turn open forever if the vendor failed.
    for stt in ["engines = [\"oa\"]", "engines = [\"dg\", \"fake\"]"] {
        let base = voxgate(&providers, stt).await;
        let mut ws = connect(&base).await;
        let update =
            json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "vendor"}}}}});
        ws.send(Message::text(update.to_string())).await.unwrap();
        let error = next(&mut ws).await;
        assert_eq!(error["type"], "error", "{stt}: {error}");
        assert_eq!(error["error"]["param"], "session.audio.input.turn_detection.type", "{stt}: {error}");
        // Nothing changed: server_vad still ends turns.
        let (_, completed) = one_turn(&mut ws).await;
        assert!(completed["transcript"].as_str().is_some());
    }
}
