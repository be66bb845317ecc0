//! The text-to-speech conformance suite: the same checks over every hosted TTS adapter, each against
//! its fake vendor (`support::speech_tts`), through a Realtime session on loopback (`/v1/realtime`,
//! a text turn answered in audio by the fake echo model). Time is paused: the session paces audio
//! on tokio's clock. Then the fallback rules through a session: a vendor that refuses, stalls or
//! breaks hands the answer to the next engine, and the client sees no vendor error.

use base64::Engine as _;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::speech_tts::{self, heard_words, messages, upgrades, LEAD_MS, MS_PER_CHAR};
use crate::support::{events_until as until, eventually, next_event as next, start_voxgate, Recorder, Ws, FAKE_ECHO};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const KEY: &str = "tts-key-canary-7731";
/// What the user says; the echo model answers "You said: " and this.
const SAID: &str = "book a table for four people by the window please";

/// One adapter under test.
#[derive(Clone, Copy)]
struct Adapter {
    kind: &'static str,
    /// The vendor puts silence before each text and aligns words (see `support::speech_tts`).
    aligned: bool,
    /// The vendor speaks in messages (so some can be malformed), not a raw audio body.
    messages: bool,
}

const ADAPTERS: &[Adapter] = &[
    Adapter { kind: "openai", aligned: false, messages: false },
    Adapter { kind: "elevenlabs", aligned: true, messages: true },
    Adapter { kind: "cartesia", aligned: true, messages: true },
    Adapter { kind: "deepgram", aligned: false, messages: true },
];

async fn start_fake(kind: &str) -> (String, Recorder) {
    match kind {
        "openai" => speech_tts::openai::start().await,
        "elevenlabs" => speech_tts::elevenlabs::start().await,
        "cartesia" => speech_tts::cartesia::start().await,
        "deepgram" => speech_tts::deepgram::start().await,
        other => panic!("no fake for {other}"),
    }
}

/// voxgate with the fake `kind` as provider `tts` and `[tts] engines` as given.
async fn server(kind: &str, url: &str, engines: &str, extra: &str) -> String {
    let config = format!(
        r#"
{FAKE_ECHO}[routes.voice]
models = ["echo"]
[providers.tts]
kind = "{kind}"
base_url = "{url}"
api_key = "env:TTS_KEY"
[stt]
engine = "none"
[tts]
engines = {engines}
ms_per_char = 20
{extra}
"#
    );
    start_voxgate(&config, &[("TTS_KEY", KEY)]).await.0
}

async fn connect(base: &str) -> Ws {
    let url = format!("{}/v1/realtime?model=voice", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("websocket connects");
    assert_eq!(next(&mut ws).await["type"], "session.created");
    ws
}

async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string())).await.expect("send");
}

/// Asks for a spoken answer to `SAID`.
async fn ask(ws: &mut Ws) {
    let item = json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": SAID}]});
    send(ws, json!({"type": "conversation.item.create", "item": item})).await;
    send(ws, json!({"type": "response.create"})).await;
}

fn of<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

fn audio_bytes(events: &[Value]) -> usize {
    of(events, "response.output_audio.delta").iter().map(|e| B64.decode(e["delta"].as_str().unwrap()).unwrap().len()).sum()
}

fn spoken(events: &[Value]) -> String {
    of(events, "response.output_audio_transcript.delta").iter().map(|e| e["delta"].as_str().unwrap()).collect()
}

/// The audio the fakes make for `texts` (the chunks the vendor was sent), in ms.
fn audio_ms(texts: &[String], aligned: bool) -> f64 {
    texts
        .iter()
        .map(|t| t.chars().filter(|c| !c.is_whitespace()).count() as f64 * f64::from(MS_PER_CHAR) + if aligned { LEAD_MS } else { 0.0 })
        .sum()
}

/// The texts the vendor was asked to speak, in order.
fn texts_sent(kind: &str, recorder: &Recorder) -> Vec<String> {
    match kind {
        "openai" => upgrades(recorder).iter().map(|r| r.body["input"].as_str().unwrap_or_default().to_string()).collect(),
        "elevenlabs" => {
            messages(recorder).iter().filter_map(|m| m["text"].as_str()).filter(|t| !t.trim().is_empty()).map(str::to_string).collect()
        }
        "cartesia" => {
            messages(recorder).iter().filter_map(|m| m["transcript"].as_str()).filter(|t| !t.is_empty()).map(str::to_string).collect()
        }
        "deepgram" => messages(recorder).iter().filter(|m| m["type"] == "Speak").map(|m| m["text"].as_str().unwrap().to_string()).collect(),
        other => panic!("{other}"),
    }
}

/// How the vendor wants its key: a header, never in anything the client could see.
fn assert_auth(kind: &str, recorder: &Recorder) {
    let first = &upgrades(recorder)[0];
    match kind {
        "openai" => assert_eq!(first.header("authorization"), Some(format!("Bearer {KEY}").as_str())),
        "elevenlabs" => assert_eq!(first.header("xi-api-key"), Some(KEY)),
        "cartesia" => {
            assert_eq!(first.header("x-api-key"), Some(KEY));
            assert!(first.header("cartesia-version").is_some_and(|v| v.len() == 10), "{first:?}");
            assert!(!first.query.contains(KEY), "the key stays out of the URL");
        }
        "deepgram" => assert_eq!(first.header("authorization"), Some(format!("Token {KEY}").as_str())),
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn audio_arrives_at_the_session_rate_and_format() {
    for adapter in ADAPTERS {
        let kind = adapter.kind;
        let (url, recorder) = start_fake(kind).await;
        let base = server(kind, &url, r#"["tts"]"#, "").await;
        for (format, bytes_per_ms) in [(json!({"type": "audio/pcm", "rate": 24000}), 48.0), (json!({"type": "audio/pcmu"}), 8.0)] {
            let before = texts_sent(kind, &recorder).len();
            let mut ws = connect(&base).await;
            send(&mut ws, json!({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"format": format}}}}))
                .await;
            assert_eq!(next(&mut ws).await["type"], "session.updated");
            ask(&mut ws).await;
            let events = until(&mut ws, "response.done").await;
            let done = &events.last().unwrap()["response"];
            assert_eq!(done["status"], "completed", "{kind}: {done}");
            assert_eq!(done["voxgate"]["tts_engine"], "tts", "{kind}");
            assert!(of(&events, "error").is_empty(), "{kind}: {events:?}");
            let answer = format!("You said: {SAID}");
            assert_eq!(spoken(&events), answer, "{kind}");
            // Every chunk went to the vendor once, and all its audio came out at the session's rate.
            let texts = texts_sent(kind, &recorder)[before..].to_vec();
            // (a vendor that wants each piece to end in a space gets one)
            assert_eq!(texts.concat().split_whitespace().collect::<Vec<_>>(), answer.split_whitespace().collect::<Vec<_>>(), "{kind}");
            let expected = audio_ms(&texts, adapter.aligned) * bytes_per_ms;
            let got = audio_bytes(&events) as f64;
            assert!((got - expected).abs() <= expected * 0.02 + 64.0, "{kind} {format}: {got} bytes of audio, expected about {expected}");
        }
        assert_auth(kind, &recorder);
    }
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap()
}

/// The response to `SAID` with `engines`, the fake's recorder, and `/metrics` after it.
async fn answer_with(adapter: &Adapter, engines: &str, extra: &str) -> (Vec<Value>, Recorder, String) {
    let (url, recorder) = start_fake(adapter.kind).await;
    let base = server(adapter.kind, &url, engines, extra).await;
    let mut ws = connect(&base).await;
    ask(&mut ws).await;
    let events = until(&mut ws, "response.done").await;
    let metrics = metrics(&base).await;
    (events, recorder, metrics)
}

fn fallbacks(metrics: &str, reason: &str) -> bool {
    metrics.lines().any(|l| l.starts_with(&format!(r#"voxgate_speech_fallbacks_total{{stage="tts",from="tts",reason="{reason}"}}"#)))
}

#[tokio::test(start_paused = true)]
async fn a_refused_vendor_hands_every_chunk_to_the_next_engine_unseen_by_the_client() {
    for adapter in ADAPTERS {
        let kind = adapter.kind;
        let (events, recorder, metrics) = answer_with(adapter, r#"["tts:rate_limited", "fake"]"#, "").await;
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["status"], "completed", "{kind}: {done}");
        assert_eq!(done["voxgate"]["tts_engine"], "fake", "{kind}");
        assert!(of(&events, "error").is_empty(), "{kind}: the client saw a vendor error");
        assert_eq!(spoken(&events), format!("You said: {SAID}"), "{kind}");
        assert!(audio_bytes(&events) > 0, "{kind}");
        assert!(fallbacks(&metrics, "rate_limited"), "{kind}: {metrics}");
        assert!(!upgrades(&recorder).is_empty(), "{kind}: the vendor was asked first");
        assert!(!metrics.contains(KEY), "{kind}: the key is in /metrics");
    }
}

#[tokio::test(start_paused = true)]
async fn no_first_audio_within_ttfb_ms_max_moves_the_chunk_on() {
    for adapter in ADAPTERS {
        let kind = adapter.kind;
        let (events, _, metrics) = answer_with(adapter, r#"["tts:stall", "fake"]"#, "ttfb_ms_max = 700").await;
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["status"], "completed", "{kind}: {done}");
        assert_eq!(done["voxgate"]["tts_engine"], "fake", "{kind}");
        // The first chunk waited for the deadline, then the next engine spoke it.
        let ttfb = done["voxgate"]["latency_ms"]["tts_ttfb"].as_f64().unwrap();
        assert!(ttfb >= 700.0, "{kind}: first audio after {ttfb} ms");
        assert!(fallbacks(&metrics, "ttfb_timeout"), "{kind}: {metrics}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_vendor_that_breaks_mid_answer_leaves_the_rest_to_the_next_engine() {
    for adapter in ADAPTERS {
        let kind = adapter.kind;
        let (events, recorder, metrics) = answer_with(adapter, r#"["tts:cut", "fake"]"#, "").await;
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["status"], "completed", "{kind}: {done}");
        assert!(of(&events, "error").is_empty(), "{kind}");
        // The first chunk was the vendor's (cut short); the rest of the answer the next engine's.
        assert_eq!(texts_sent(kind, &recorder).len(), 1, "{kind}: the vendor got only the first chunk");
        assert_eq!(done["voxgate"]["tts_engine"], "fake", "{kind}");
        assert_eq!(spoken(&events), format!("You said: {SAID}"), "{kind}");
        assert!(metrics.lines().any(|l| l.starts_with(r#"voxgate_speech_fallbacks_total{stage="tts",from="tts""#)), "{kind}: {metrics}");
    }
}

#[tokio::test(start_paused = true)]
async fn when_every_engine_fails_the_response_fails_without_the_key() {
    for adapter in ADAPTERS {
        let kind = adapter.kind;
        let (events, _, _) = answer_with(adapter, r#"["tts:unauthorized"]"#, "").await;
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["status"], "failed", "{kind}: {done}");
        assert_eq!(done["status_details"]["error"]["code"], "tts_failed", "{kind}: {done}");
        let text = serde_json::to_string(&events).unwrap();
        assert!(!text.contains(KEY), "{kind}: the key reached the client");
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_skips_the_vendor() {
    for adapter in ADAPTERS {
        let kind = adapter.kind;
        let (url, recorder) = start_fake(kind).await;
        let base = server(kind, &url, r#"["tts:rate_limited", "fake"]"#, "breaker_failures = 2\nbreaker_cooldown_ms = 60000").await;
        let mut ws = connect(&base).await;
        for _ in 0..3 {
            ask(&mut ws).await;
            let events = until(&mut ws, "response.done").await;
            assert_eq!(events.last().unwrap()["response"]["status"], "completed", "{kind}");
        }
        // Two refusals opened the breaker: the chunks after them never reached the vendor.
        assert_eq!(upgrades(&recorder).len(), 2, "{kind}");
        assert!(fallbacks(&metrics(&base).await, "breaker_open"), "{kind}");
    }
}

/// What the vendor requires of a session: how it opens, what each chunk carries, how it ends.
fn assert_session_protocol(kind: &str, recorder: &Recorder) {
    let first = &upgrades(recorder)[0];
    match kind {
        "openai" => {
            for r in upgrades(recorder) {
                assert_eq!(
                    (r.path.as_str(), &r.body["response_format"], &r.body["model"]),
                    ("/v1/audio/speech", &json!("pcm"), &json!("gpt-4o-mini-tts"))
                );
            }
        }
        "elevenlabs" => {
            assert!(first.path.ends_with("/stream-input"), "{}", first.path);
            assert!(first.query.contains("output_format=pcm_24000") && first.query.contains("model_id="), "{}", first.query);
            assert!(first.query.contains("sync_alignment=true"), "alignment with every audio message: {}", first.query);
            let sent = messages(recorder);
            assert_eq!(sent[0]["text"], " ", "the stream opens with a single space: {sent:?}");
            let texts = &sent[1..sent.len() - 1];
            assert!(texts.iter().all(|m| m["flush"] == true && m["text"].as_str().unwrap().ends_with(' ')), "{sent:?}");
            assert_eq!(sent.last().unwrap(), &json!({"text": ""}), "the stream ends with an empty text: {sent:?}");
            assert_eq!(upgrades(recorder).len(), 1, "one socket for the whole answer");
        }
        "cartesia" => {
            assert_eq!(first.path, "/tts/websocket");
            let sent = messages(recorder);
            let (texts, last) = sent.split_at(sent.len() - 1);
            // One context for the answer, each chunk continuing it, an empty transcript ending it.
            let context = &texts[0]["context_id"];
            assert!(texts.iter().all(|m| &m["context_id"] == context && m["continue"] == true && m["add_timestamps"] == true), "{sent:?}");
            assert!(texts.iter().all(|m| m["output_format"] == json!({"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000})));
            assert_eq!((&last[0]["context_id"], &last[0]["transcript"], &last[0]["continue"]), (context, &json!(""), &json!(false)));
            assert_eq!(upgrades(recorder).len(), 1, "one socket for the whole answer");
        }
        "deepgram" => {
            assert_eq!(first.path, "/v1/speak");
            assert!(first.query.contains("encoding=linear16") && first.query.contains("sample_rate=24000"), "{}", first.query);
            assert!(first.query.contains("model=aura-2-thalia-en"), "{}", first.query);
            // Each chunk is spoken then flushed; the answer's end closes the stream.
            let sent: Vec<String> = messages(recorder).iter().map(|m| m["type"].as_str().unwrap().to_string()).collect();
            let (pairs, close) = sent.split_at(sent.len() - 1);
            assert!(pairs.chunks(2).all(|p| p == ["Speak", "Flush"]), "{sent:?}");
            assert_eq!(close, ["Close"]);
            assert_eq!(upgrades(recorder).len(), 1, "one socket for the whole answer");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn each_vendor_session_opens_and_ends_as_the_vendor_requires() {
    for adapter in ADAPTERS {
        let kind = adapter.kind;
        let (url, recorder) = start_fake(kind).await;
        let base = server(kind, &url, r#"["tts"]"#, "").await;
        let mut ws = connect(&base).await;
        ask(&mut ws).await;
        let events = until(&mut ws, "response.done").await;
        assert_eq!(events.last().unwrap()["response"]["status"], "completed", "{kind}");
        // The end of the answer reaches the vendor after response.done.
        let ended = eventually(|| match kind {
            "openai" => true,
            "cartesia" => messages(&recorder).last().is_some_and(|m| m["continue"] == false),
            "deepgram" => messages(&recorder).last().is_some_and(|m| m["type"] == "Close"),
            _ => messages(&recorder).last().is_some_and(|m| m["text"] == ""),
        })
        .await;
        assert!(ended, "{kind}: {:?}", messages(&recorder));
        assert_session_protocol(kind, &recorder);
    }
}

#[tokio::test(start_paused = true)]
async fn barge_in_keeps_the_words_the_vendor_says_were_played() {
    for adapter in ADAPTERS.iter().filter(|a| a.aligned) {
        let kind = adapter.kind;
        let (url, _recorder) = start_fake(kind).await;
        let base = server(kind, &url, r#"["tts"]"#, "").await;
        let mut ws = connect(&base).await;
        ask(&mut ws).await;
        let mut before = until(&mut ws, "response.output_audio.delta").await;
        // Until about 450 ms of audio went out (the caller has heard up to 100 ms less, the lead).
        while audio_bytes(&before) < 450 * 48 {
            before.push(next(&mut ws).await);
        }
        send(&mut ws, json!({"type": "output_audio_buffer.clear"})).await;
        let events = until(&mut ws, "response.done").await;
        let heard_ms = of(&events, "conversation.item.truncated")[0]["audio_end_ms"].as_f64().unwrap();
        let kept = events.last().unwrap()["response"]["output"][0]["content"][0]["transcript"].as_str().unwrap().to_string();
        // The chunks released before the cut, each LEAD_MS of silence then 20 ms per character.
        let chunks: Vec<String> =
            of(&before, "response.output_audio_transcript.delta").iter().map(|e| e["delta"].as_str().unwrap().to_string()).collect();
        let mut expected = String::new();
        let mut start = 0.0;
        for chunk in &chunks {
            let length = audio_ms(std::slice::from_ref(chunk), true);
            if heard_ms >= start + length {
                expected.push_str(chunk);
            } else {
                expected.push_str(&heard_words(chunk, heard_ms - start));
                break;
            }
            start += length;
        }
        assert_eq!(kept, expected, "{kind}: heard {heard_ms} ms of {chunks:?}");
        // The cut came in the first chunk's silence: a length estimate would have kept words.
        assert!(heard_ms > 0.0 && heard_ms < LEAD_MS, "{kind}: heard {heard_ms} ms");
        assert_eq!(kept, "", "{kind}");
        // An estimate from the chunk's length would have kept its first word(s).
        let first = &chunks[0];
        let share = heard_ms / audio_ms(std::slice::from_ref(first), true);
        let estimate: String = first.chars().take((first.chars().count() as f64 * share) as usize).collect();
        assert!(estimate.trim().contains(' '), "{kind}: the estimate {estimate:?} would keep a word too");
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_vendor_messages_are_counted_then_the_engine_counts_as_failed() {
    for adapter in ADAPTERS.iter().filter(|a| a.messages) {
        let kind = adapter.kind;
        let (events, _, metrics) = answer_with(adapter, r#"["tts:malformed", "fake"]"#, "").await;
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["status"], "completed", "{kind}: {done}");
        assert_eq!(done["voxgate"]["tts_engine"], "fake", "{kind}");
        assert!(fallbacks(&metrics, "bad_messages"), "{kind}: {metrics}");
        let bad = metrics.lines().find(|l| l.starts_with(r#"voxgate_speech_vendor_bad_messages_total{stage="tts",engine="tts"}"#));
        assert!(bad.is_some_and(|l| l.ends_with(" 5") || l.ends_with(" 10")), "{kind}: {bad:?}");
        let failed = metrics.lines().find(|l| l.starts_with(r#"voxgate_speech_vendor_failures_total{stage="tts",engine="tts"}"#));
        assert!(failed.is_some(), "{kind}: {metrics}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_on_the_websocket_upgrade_falls_back_as_a_rate_limit() {
    // Cartesia's fake refuses every upgrade under /busy (ElevenLabs' `rate_limited` voice does it above).
    let (url, recorder) = speech_tts::cartesia::start().await;
    let base = server("cartesia", &format!("{url}/busy"), r#"["tts", "fake"]"#, "").await;
    let mut ws = connect(&base).await;
    ask(&mut ws).await;
    let events = until(&mut ws, "response.done").await;
    let done = &events.last().unwrap()["response"];
    assert_eq!((&done["status"], &done["voxgate"]["tts_engine"]), (&json!("completed"), &json!("fake")), "{done}");
    assert!(fallbacks(&metrics(&base).await, "rate_limited"));
    assert_eq!(upgrades(&recorder)[0].path, "/busy/tts/websocket", "the base URL's path is kept");
}

#[tokio::test(start_paused = true)]
async fn deepgram_audio_between_clear_and_cleared_is_dropped() {
    // Every chunk's audio comes a second late, after the 700 ms deadline: the adapter sends Clear,
    // the chunk goes to the next engine, and the late audio that still arrives before Cleared
    // must not count as the next chunk's.
    let adapter = ADAPTERS.iter().find(|a| a.kind == "deepgram").unwrap();
    let (events, recorder, metrics) = answer_with(adapter, r#"["tts:slow", "fake"]"#, "ttfb_ms_max = 700").await;
    let done = &events.last().unwrap()["response"];
    assert_eq!((&done["status"], &done["voxgate"]["tts_engine"]), (&json!("completed"), &json!("fake")), "{done}");
    let texts = texts_sent("deepgram", &recorder);
    let expected = audio_ms(&[format!("You said: {SAID}")], false) * 48.0;
    let got = audio_bytes(&events) as f64;
    assert!((got - expected).abs() <= expected * 0.02 + 64.0, "{got} bytes of audio, the fake engine alone makes {expected}: {texts:?}");
    assert!(messages(&recorder).iter().any(|m| m["type"] == "Clear"), "{:?}", messages(&recorder));
    assert!(fallbacks(&metrics, "ttfb_timeout"));
    assert_eq!(upgrades(&recorder).len(), 1, "the socket outlives an abandoned chunk");
}

#[test]
fn a_vendor_switched_on_by_its_key_variable_can_be_named_in_tts_engines() {
    let config = "[tts]\nengines = [\"elevenlabs:voice-1\", \"cartesia\", \"deepgram:aura-2-thalia-en\", \"openai:coral\", \"fake\"]\n";
    let keys = |k: &str| k.ends_with("_API_KEY").then(|| "k".to_string());
    let c = voxgate::config::Config::from_toml(config, &keys).expect("valid");
    let metrics = std::sync::Arc::new(voxgate::metrics::Metrics::default());
    let tts = voxgate::tts::build(&c.tts, &c.models_dir, &metrics).unwrap().expect("an engine");
    assert_eq!((tts.name(), tts.rate_hz()), ("elevenlabs", 24_000), "the first of the list speaks");
    // Without the key variable the vendor is not there, and the error says how it switches on.
    let err = voxgate::config::Config::from_toml(config, &|_: &str| None).unwrap_err().to_string();
    assert!(err.contains("\"elevenlabs\" is not an engine") && err.contains("key variable"), "{err}");
}

// -------------------------------------------------------------------------------------------------
// One adapter alone, through the library: what happens between the chunks of an answer.
// -------------------------------------------------------------------------------------------------

fn adapter(kind: voxgate::llm::config::ProviderKind, url: &str, voice: &str) -> std::sync::Arc<dyn voxgate::tts::TextToSpeech> {
    let provider = voxgate::llm::config::ProviderConfig {
        id: "tts".into(),
        kind,
        base_url: url.into(),
        api_key: Some(voxgate::secret::Secret::new(KEY)),
        model_path: None,
        connect_timeout_ms: 1000,
        diarize: true,
    };
    voxgate::tts::vendor::build(&provider, Some(voice.into()), std::sync::Arc::new(voxgate::metrics::Metrics::default())).unwrap()
}

/// Speaks one chunk in `context`; returns how many audio frames and word ends came, and checks the
/// words end inside the chunk's audio, the last at its end (as the fakes make them).
async fn speak_chunk(tts: &dyn voxgate::tts::TextToSpeech, context: &voxgate::tts::TtsContext, text: &str) -> (usize, usize) {
    use voxgate::tts::{Chunk, Spoken};
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    tts.speak(Chunk { text: text.into(), voice: None, context: context.clone() }, tx).await.unwrap();
    let (mut frames, mut words, mut audio_ms, mut last_end_ms) = (0, 0, 0.0, 0.0);
    while let Ok(s) = rx.try_recv() {
        match s {
            Spoken::Audio { rate_hz, samples } => {
                assert_eq!(rate_hz, 24_000);
                frames += 1;
                audio_ms += samples.len() as f64 / 24.0;
            }
            Spoken::Words(w) => {
                words += w.len();
                last_end_ms = w.last().map_or(last_end_ms, |w| w.end_ms);
            }
            Spoken::Engine(_) => {}
        }
    }
    if words > 0 {
        assert!((last_end_ms - audio_ms).abs() < 1.0, "{text:?}: the last word ends at {last_end_ms} ms of {audio_ms} ms of audio");
    }
    (frames, words)
}

#[tokio::test(start_paused = true)]
async fn elevenlabs_keeps_its_socket_alive_while_the_model_is_slow() {
    let (url, recorder) = speech_tts::elevenlabs::start().await;
    let tts = adapter(voxgate::llm::config::ProviderKind::Elevenlabs, &url, "ok");
    let (context, end) = voxgate::tts::TtsContext::new();
    assert_eq!(speak_chunk(tts.as_ref(), &context, "Sure, one moment. ").await.1, 3);
    // The model takes 25 s to write its next sentence: the vendor would close after 20 s of silence.
    tokio::time::sleep(std::time::Duration::from_secs(25)).await;
    let (frames, words) = speak_chunk(tts.as_ref(), &context, "Your table is booked.").await;
    assert!(frames > 0 && words == 4, "{frames} frames, {words} words");
    drop(end);
    assert!(eventually(|| messages(&recorder).last().is_some_and(|m| m["text"] == "")).await);
    let texts: Vec<Value> = messages(&recorder).iter().map(|m| m["text"].clone()).collect();
    let keepalives = texts[2..texts.len() - 2].iter().filter(|t| *t == " ").count();
    assert_eq!(keepalives, 2, "a keepalive every 10 s of silence: {texts:?}");
    assert_eq!(upgrades(&recorder).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn cartesia_continues_one_context_and_starts_another_once_it_expired() {
    let (url, recorder) = speech_tts::cartesia::start().await;
    let tts = adapter(voxgate::llm::config::ProviderKind::Cartesia, &url, "ok");
    let (context, end) = voxgate::tts::TtsContext::new();
    for text in ["Sure, ", "one moment. "] {
        assert_eq!(speak_chunk(tts.as_ref(), &context, text).await.1, text.split_whitespace().count());
    }
    // More than a second after its last audio the vendor has expired the context.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(speak_chunk(tts.as_ref(), &context, "Your table is booked.").await.1, 4);
    drop(end);
    assert!(eventually(|| messages(&recorder).last().is_some_and(|m| m["continue"] == false)).await);
    let contexts: Vec<String> = messages(&recorder).iter().map(|m| m["context_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(contexts[0], contexts[1], "the second chunk continues the first's context");
    assert_ne!(contexts[1], contexts[2], "a new context after the old one expired");
    assert_eq!(contexts[2], contexts[3], "the end closes the context in use");
}

#[tokio::test(start_paused = true)]
async fn cartesia_reuses_an_idle_socket_and_replaces_one_the_vendor_closed() {
    let (url, recorder) = speech_tts::cartesia::start().await;
    let tts = adapter(voxgate::llm::config::ProviderKind::Cartesia, &url, "ok");
    for (i, answer) in ["Sure, one moment. ", "Your table is booked. "].into_iter().enumerate() {
        let (context, end) = voxgate::tts::TtsContext::new();
        assert_eq!(speak_chunk(tts.as_ref(), &context, answer).await.1, answer.split_whitespace().count());
        drop(end);
        // The answer's end, then its `done`, before the socket is idle.
        assert!(eventually(|| messages(&recorder).iter().filter(|m| m["continue"] == false).count() == i + 1).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(upgrades(&recorder).len(), 1, "the second answer took the first's idle socket");
    // Idle past the vendor's limit: the pooled socket is dead, and the next answer opens a new one
    // without the caller noticing.
    tokio::time::sleep(speech_tts::cartesia::IDLE_CLOSE * 2).await;
    let (context, _end) = voxgate::tts::TtsContext::new();
    assert_eq!(speak_chunk(tts.as_ref(), &context, "Anything else? ").await.1, 2);
    assert_eq!(upgrades(&recorder).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_session_picks_an_engine_of_the_list_by_its_voice() {
    let (url, recorder) = speech_tts::cartesia::start().await;
    let base = server("cartesia", &url, r#"["fake", "tts"]"#, "").await;
    let mut ws = connect(&base).await;
    send(&mut ws, json!({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "tts:voice-7"}}}})).await;
    assert_eq!(next(&mut ws).await["type"], "session.updated");
    ask(&mut ws).await;
    let events = until(&mut ws, "response.done").await;
    assert_eq!(events.last().unwrap()["response"]["voxgate"]["tts_engine"], "tts");
    let sent = messages(&recorder);
    assert!(sent.iter().filter(|m| m["transcript"] != "").all(|m| m["voice"]["id"] == "voice-7"), "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_redirecting_tts_vendor_is_never_followed_and_the_next_engine_speaks() {
    // The OpenAI adapter's endpoint answers 307 to another host: following it would hand that host
    // the request (and with it the vendor's key header). voxgate treats the 3xx as a failure.
    let elsewhere_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = elsewhere_hits.clone();
    let elsewhere = crate::support::spawn(axum::Router::new().fallback(move || {
        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { "audio" }
    }))
    .await;
    let redirect = crate::support::spawn(axum::Router::new().fallback(move || async move {
        (axum::http::StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, format!("http://{elsewhere}/v1/audio/speech"))])
    }))
    .await;
    let base = server("openai", &format!("http://{redirect}/v1"), r#"["tts", "fake"]"#, "").await;
    let mut ws = connect(&base).await;
    ask(&mut ws).await;
    let events = until(&mut ws, "response.done").await;
    let done = &events.last().unwrap()["response"];
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["voxgate"]["tts_engine"], "fake");
    assert!(of(&events, "error").is_empty(), "the client saw a vendor error");
    assert_eq!(spoken(&events), format!("You said: {SAID}"));
    assert_eq!(elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect was followed");
}
