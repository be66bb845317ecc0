//! The cost of a call's speech and tokens beside its flat-rate charge: a spoken turn through a real
//! `/v1/realtime` session, transcribed by a fake Deepgram vendor and spoken by the fake TTS engine,
//! both priced in the config, ends with a ledger record, `/v1/sessions` and `/v1/usage` showing
//! the speech-to-text, text-to-speech and LLM costs and the margin, to the picodollar.

use std::time::Duration;

use base64::Engine as _;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::speech_stt::{self, booking_script, Flavour};
use crate::support::{events_until as until, next_event as next, start_voxgate, Ws, FAKE_ECHO};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Picodollars as the API writes dollars: an exact decimal with twelve places.
fn usd(picousd: i128) -> String {
    let sign = if picousd < 0 { "-" } else { "" };
    let p = picousd.unsigned_abs();
    format!("{sign}{}.{:012}", p / 1_000_000_000_000, p % 1_000_000_000_000)
}

/// `ms` of 24 kHz audio: a 440 Hz tone or silence.
fn audio(ms: usize, loud: bool) -> Vec<i16> {
    let amplitude = if loud { 8_000.0 } else { 0.0 };
    (0..ms * 24).map(|i| (amplitude * (i as f64 * 440.0 * std::f64::consts::TAU / 24_000.0).sin()) as i16).collect()
}

async fn speak(ws: &mut Ws) {
    let mut pcm = audio(500, false);
    pcm.extend(audio(1_500, true));
    pcm.extend(audio(1_000, false));
    for chunk in pcm.chunks(480) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        ws.send(Message::text(json!({"type": "input_audio_buffer.append", "audio": B64.encode(bytes)}).to_string())).await.unwrap();
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[tokio::test(start_paused = true)]
async fn a_calls_record_and_usage_show_speech_and_token_costs_and_the_margin() {
    let vendor = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    // Deepgram at $0.012 a minute (0.2 µUSD a millisecond), the fake voice at $0.30 per 1000
    // characters, the echo model at $1 in and $2 out per million tokens.
    let config = format!(
        "{FAKE_ECHO}[providers.dg]\nkind = \"deepgram\"\nbase_url = \"{}\"\napi_key = \"dg-key\"\n\
         [routes.voice]\nmodels = [\"echo\"]\n[stt]\nengines = [\"dg\"]\n[tts]\nengine = \"fake\"\n\
         [[speech]]\nengine = \"dg\"\nmodel = \"nova-3\"\nusd_per_audio_minute = 0.012\n\
         [[speech]]\nengine = \"fake\"\nusd_per_kchar = 0.3\n",
        vendor.url
    );
    let (base, _) = start_voxgate(&config, &[]).await;
    let url = format!("{}/v1/realtime?model=voice", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.unwrap();
    let created = next(&mut ws).await;
    let id = created["session"]["id"].as_str().unwrap().to_string();
    speak(&mut ws).await;
    let events = until(&mut ws, "response.done").await;
    let completed = events.iter().find(|e| e["type"] == "conversation.item.input_audio_transcription.completed").unwrap();
    assert_eq!((completed["transcript"].as_str(), completed["engine"].as_str()), (Some("book a table for two"), Some("dg")));
    assert!(events.iter().any(|e| e["type"] == "response.output_audio.delta"), "the answer was spoken");
    ws.close(None).await.unwrap();
    drop(ws);

    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        async move { client.get(path).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let mut r = Value::Null;
    for _ in 0..200 {
        r = get(format!("{base}/v1/sessions/{id}")).await;
        if r["open"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r["close_reason"], "client_closed", "{r}");

    // What was used: the utterance's audio went to Deepgram, the answer's text to the fake voice.
    let (audio_ms, chars) = (u(&r["speech"][0]["quantity"]), u(&r["speech"][1]["quantity"]));
    assert_eq!(r["stt_audio_seconds"].as_f64().unwrap(), audio_ms as f64 / 1000.0, "{r}");
    assert!((1_500..=3_000).contains(&audio_ms), "the 1.5 s turn and its padding: {r}");
    assert_eq!(chars, u(&r["tts_chars"]), "{r}");
    assert!(chars >= "You said: book a table for two".len() as u64 - 2, "the echo's answer, spoken: {r}");
    let speech = json!([
        {"stage": "stt", "engine": "dg", "quantity": audio_ms, "unit": "audio_ms", "price_usd_per_audio_minute": "0.012000",
         "cost_usd": usd(audio_ms as i128 * 200_000)},
        {"stage": "tts", "engine": "fake", "quantity": chars, "unit": "chars", "price_usd_per_kchar": "0.300000",
         "cost_usd": usd(chars as i128 * 300_000_000)},
    ]);
    assert_eq!(r["speech"], speech, "{r}");

    // The costs, exactly: STT 0.2 µUSD a millisecond, TTS 300 µUSD a character, tokens at $1 and $2
    // per million; the charge is $0.00125 a second; the margin is what is left, to the picodollar.
    let stt = audio_ms as i128 * 200_000;
    let tts = chars as i128 * 300_000_000;
    let llm = u(&r["input_tokens"]) as i128 * 1_000_000 + u(&r["output_tokens"]) as i128 * 2_000_000;
    assert!(llm > 0, "{r}");
    let vendor_cost = stt + tts + llm;
    let charge = u(&r["billed_seconds"]) as i128 * 1_250_000_000;
    for (field, want) in [
        ("stt_cost_usd", stt),
        ("tts_cost_usd", tts),
        ("llm_cost_usd", llm),
        ("vendor_cost_usd", vendor_cost),
        ("margin_usd", charge - vendor_cost),
    ] {
        assert_eq!(r[field], usd(want), "{field}: {r}");
    }
    assert_eq!(r["amount_usd"], usd(charge));

    // The list totals them, and usage groups them by stage and engine beside the tokens and the charge.
    let list = get(format!("{base}/v1/sessions?from=2020-01-01")).await;
    assert_eq!(
        (list["total_stt_cost_usd"].as_str(), list["total_margin_usd"].as_str()),
        (Some(&*usd(stt)), Some(&*usd(charge - vendor_cost)))
    );
    assert_eq!(list["total_vendor_cost_usd"], usd(vendor_cost));
    let usage = get(format!("{base}/v1/usage?group_by=key")).await;
    let row = &usage["data"][0];
    assert_eq!(row["sessions"], 1, "{usage}");
    for (field, want) in [
        ("session_stt_cost_usd", stt),
        ("session_tts_cost_usd", tts),
        ("session_llm_cost_usd", llm),
        ("session_vendor_cost_usd", vendor_cost),
        ("session_margin_usd", charge - vendor_cost),
    ] {
        assert_eq!(row[field], usd(want), "{field}: {row}");
    }
    assert_eq!(
        row["session_speech"],
        json!([
            {"stage": "stt", "engine": "dg", "quantity": audio_ms, "unit": "audio_ms", "cost_usd": usd(stt)},
            {"stage": "tts", "engine": "fake", "quantity": chars, "unit": "chars", "cost_usd": usd(tts)},
        ]),
        "{row}"
    );
    let by_model = get(format!("{base}/v1/usage?group_by=model")).await;
    let sessions = by_model["data"].as_array().unwrap().iter().find(|r| r["group"] == "session:realtime").unwrap();
    assert_eq!(sessions["session_margin_usd"], usd(charge - vendor_cost), "{by_model}");
    let csv = client.get(format!("{base}/v1/usage?group_by=key")).header("accept", "text/csv").send().await.unwrap().text().await.unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",session_vendor_cost_usd,session_margin_usd"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().ends_with(&format!(",{},{}", usd(vendor_cost), usd(charge - vendor_cost))), "{csv}");
}

#[tokio::test(start_paused = true)]
async fn audio_is_charged_to_the_engine_that_served_it_at_the_catalogs_list_price() {
    // Deepgram is cut mid-utterance and the AssemblyAI backup transcribes the whole of it: the audio
    // is the backup's, at the catalog's Universal-Streaming price ($0.0025 a minute: its default
    // model), and nothing is charged to Deepgram, whose test model ("cut") has no price.
    let dg = speech_stt::start(Flavour::Deepgram, booking_script()).await;
    let backup = speech_stt::start(Flavour::AssemblyAi, booking_script()).await;
    let config = format!(
        "{FAKE_ECHO}[providers.dg]\nkind = \"deepgram\"\nbase_url = \"{}\"\napi_key = \"dg-key\"\n\
         [providers.backup]\nkind = \"assemblyai\"\nbase_url = \"{}\"\napi_key = \"aai-key\"\n\
         [routes.voice]\nmodels = [\"echo\"]\n[stt]\nengines = [\"dg:cut\", \"backup\"]\n[tts]\nengine = \"fake\"\n",
        dg.url, backup.url
    );
    let (base, state) = start_voxgate(&config, &[]).await;
    let url = format!("{}/v1/realtime?model=voice", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.unwrap();
    let id = next(&mut ws).await["session"]["id"].as_str().unwrap().to_string();
    speak(&mut ws).await;
    let events = until(&mut ws, "response.done").await;
    let completed = events.iter().find(|e| e["type"] == "conversation.item.input_audio_transcription.completed").unwrap();
    assert_eq!(completed["engine"], "backup", "{completed}");
    ws.close(None).await.unwrap();
    drop(ws);
    let mut r = None;
    for _ in 0..200 {
        r = state.ledger.session(&id).await.unwrap().filter(|r| r.ended_ms.is_some());
        if r.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = r.expect("the session's record");
    let stt: Vec<(&str, u64, Option<u64>, u64)> = r
        .speech
        .iter()
        .filter(|l| l.stage == voxgate::metering::speech::Stage::Stt)
        .map(|l| (l.engine.as_str(), l.quantity, l.price_microusd, l.cost_picousd))
        .collect();
    // 2,500 µUSD a minute is 1/24 µUSD a millisecond: 125 000/3 pUSD, rounded once.
    let expected = (r.stt_audio_ms as u128 * 2_500 * 1_000_000 + 30_000) / 60_000;
    assert_eq!(stt, [("backup", r.stt_audio_ms, Some(2_500), expected as u64)], "{r:?}");
    assert_eq!(r.stt_cost_picousd, expected as u64);
    // The fake voice is built in and unpriced here: its characters cost nothing.
    assert_eq!((r.tts_cost_picousd, r.vendor_cost_picousd()), (0, r.stt_cost_picousd + r.token_cost_picousd));
}
