//! Upstream keys never reach the logs, even at TRACE level with every request failing in the
//! ways that print the most (auth errors, rate limits, quota errors, cuts).

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::support;

const SECRET: &str = "sk-log-SECRET-00112233";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: the subscriber below is this thread's, and every task of the server and the fake
// vendors runs here and logs to it.
#[tokio::test(flavor = "current_thread")]
async fn upstream_keys_never_appear_in_trace_logs() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    // Not the process's subscriber: the other tests of this binary run beside this one, and their
    // logs would flood this buffer (and could say "attempt failed" for this test).
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).with_ansi(false).finish();
    let _logs = tracing::subscriber::set_default(subscriber);

    for kind in ["openai", "anthropic", "gemini"] {
        let (url, _) = match kind {
            "openai" => support::vendors::openai::start().await,
            "anthropic" => support::vendors::anthropic::start().await,
            _ => support::vendors::gemini::start().await,
        };
        {
            let config = format!(
                "[gateway]\nretry_after_ms_max = 0\n[providers.v]\nkind = \"{kind}\"\nbase_url = \"{url}\"\napi_key = \"env:K\"\n\
                 [[models]]\nid = \"unauthorized\"\nprovider = \"v\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0\n\
                 [[models]]\nid = \"quota\"\nprovider = \"v\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0\n\
                 [[models]]\nid = \"rate_limited\"\nprovider = \"v\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0\n\
                 [[models]]\nid = \"cut\"\nprovider = \"v\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0\n"
            );
            let (base, _) = support::start_voxgate(&config, &[("K", SECRET)]).await;
            for model in ["unauthorized", "quota", "rate_limited", "cut"] {
                let r = reqwest::Client::new()
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                let _ = r.text().await;
            }
        }
    }
    let logs = String::from_utf8_lossy(&buffer.0.lock().unwrap()).to_string();
    assert!(logs.contains("attempt failed"), "the failures were logged at all");
    assert!(!logs.contains(SECRET), "an upstream key reached the logs");
}

// Speech-to-text vendors: the key travels in a header on the WebSocket upgrade; refused, cut,
// garbled and stalled streams, and the fallback between them, must not print it anywhere: logs,
// `/metrics`, or the error a client receives.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn speech_vendor_keys_never_appear_in_logs_metrics_or_errors() {
    use futures::SinkExt;
    use support::speech_stt::{booking_script, start, Flavour};

    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).with_ansi(false).finish();
    let _logs = tracing::subscriber::set_default(subscriber);

    let dg = start(Flavour::Deepgram, booking_script()).await;
    let aai = start(Flavour::AssemblyAi, booking_script()).await;
    let oa = start(Flavour::OpenAi, booking_script()).await;
    let config = format!(
        "{}[routes.voice]\nmodels = [\"echo\"]\n\
         [providers.dg]\nkind = \"deepgram\"\nbase_url = \"{}\"\napi_key = \"env:K\"\n\
         [providers.aai]\nkind = \"assemblyai\"\nbase_url = \"{}\"\napi_key = \"env:K\"\n\
         [providers.oa]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"env:K\"\n\
         [stt]\nengines = [\"dg:reject\", \"aai:malformed\", \"oa:cut\", \"dg:stall\"]\n[tts]\nengine = \"none\"\n",
        support::FAKE_ECHO,
        dg.url,
        aai.url,
        oa.url
    );
    let (base, _) = support::start_voxgate(&config, &[("K", SECRET)]).await;
    let url = format!("{}/v1/realtime?model=voice", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.unwrap();
    let mut pcm: Vec<i16> = vec![0; 500 * 24];
    pcm.extend((0..1_500 * 24).map(|i| (8_000.0 * (i as f64 * 0.1152).sin()) as i16));
    pcm.extend(vec![0; 1_000 * 24]);
    for chunk in pcm.chunks(480) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        let audio = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
        let event = json!({"type": "input_audio_buffer.append", "audio": audio});
        ws.send(tokio_tungstenite::tungstenite::Message::text(event.to_string())).await.unwrap();
    }
    // Every engine fails: the client gets the last one's error.
    let events = support::events_until(&mut ws, "conversation.item.input_audio_transcription.failed").await;
    let failed = events.last().unwrap().to_string();
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let logs = String::from_utf8_lossy(&buffer.0.lock().unwrap()).to_string();
    assert!(logs.contains("speech-to-text stream failed"), "the failures were logged at all");
    assert!(metrics.contains("voxgate_speech_fallbacks_total"), "{metrics}");
    for (what, text) in [("logs", &logs), ("metrics", &metrics), ("the client's error", &failed)] {
        assert!(!text.contains(SECRET), "a vendor key reached {what}");
    }
    // Each vendor did get it, in its header.
    assert_eq!(dg.connections()[0].header("authorization"), Some(format!("Token {SECRET}").as_str()));
    assert_eq!(aai.connections()[0].header("authorization"), Some(SECRET));
}

// Text-to-speech vendors: refused (on the upgrade or in a message that echoes the key), cut and
// garbled answers, each vendor alone so every failure reaches the client as `tts_failed`.
#[tokio::test(flavor = "current_thread")]
async fn text_to_speech_vendor_keys_never_appear_in_trace_logs_events_or_metrics() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).with_ansi(false).finish();
    let _logs = tracing::subscriber::set_default(subscriber);

    let mut seen = String::new();
    for kind in ["openai", "elevenlabs", "cartesia", "deepgram"] {
        let (url, _) = match kind {
            "openai" => support::speech_tts::openai::start().await,
            "elevenlabs" => support::speech_tts::elevenlabs::start().await,
            "cartesia" => support::speech_tts::cartesia::start().await,
            _ => support::speech_tts::deepgram::start().await,
        };
        let busy = format!("{url}/busy");
        for (base_url, scenario) in [(&url, "unauthorized"), (&url, "rate_limited"), (&url, "cut"), (&url, "malformed"), (&busy, "ok")] {
            let config = format!(
                "{}[routes.voice]\nmodels = [\"echo\"]\n[providers.tts]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\napi_key = \"env:K\"\n\
                 [stt]\nengine = \"none\"\n[tts]\nengines = [\"tts:{scenario}\"]\n",
                support::FAKE_ECHO
            );
            let (base, _) = support::start_voxgate(&config, &[("K", SECRET)]).await;
            let url = format!("{}/v1/realtime?model=voice", base.replace("http://", "ws://"));
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let item = json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there, how are you?"}]});
            ws.send(Message::text(json!({"type": "conversation.item.create", "item": item}).to_string())).await.unwrap();
            ws.send(Message::text(json!({"type": "response.create"}).to_string())).await.unwrap();
            let events = support::events_until(&mut ws, "response.done").await;
            seen.push_str(&serde_json::to_string(&events).unwrap());
            seen.push_str(&reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap());
        }
    }
    let logs = String::from_utf8_lossy(&buffer.0.lock().unwrap()).to_string();
    assert!(logs.contains("response failed"), "the failures were logged at all");
    assert!(seen.contains("tts_failed"), "the failures reached the client");
    assert!(!logs.contains(SECRET), "a speech vendor's key reached the logs");
    assert!(!seen.contains(SECRET), "a speech vendor's key reached a client or /metrics");
}
