//! AssemblyAI Universal-Streaming v3 (`/v3/ws`): raw PCM16 in binary frames of 50 ms to 1 s, JSON
//! out.
//!
//! A `Turn` message carries the whole turn's words so far: a final prefix (`word_is_final`) and a
//! guess for the rest. This adapter turns that into segments: the words that became final since
//! the last message, then the guess. `end_of_turn` ends the turn (every word is final then); our
//! `ForceEndpoint` asks for it when the session ends an utterance. Times are integer ms of the
//! audio received. `Terminate` ends the call: the server flushes its turns, sends `Termination`
//! and closes; an `Error` message comes right before an error close, with the close code in it.
//! Turns are asked for unformatted (`format_turns=false`): a formatted turn is a second copy of a
//! finished one, and the words arrive once this way.

use std::time::Duration;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::Message;

use super::stream::{pcm_bytes, query_value, request, ws_url, Heard, Protocol, VendorWord};
use super::SttError;
use crate::secret::Secret;

pub const DEFAULT_MODEL: &str = "universal-streaming-english";

/// Samples per audio message: 50 ms, the smallest frame the service takes.
const FRAME_SAMPLES: usize = 800;

/// One call's stream.
pub struct AssemblyAi {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
    pub diarize: bool,
    /// The turn being heard, and how many of its words were passed on as final.
    turn: Option<u64>,
    finals_sent: usize,
}

impl AssemblyAi {
    pub fn new(base_url: String, api_key: Option<Secret>, model: String, diarize: bool) -> AssemblyAi {
        AssemblyAi { base_url, api_key, model, diarize, turn: None, finals_sent: 0 }
    }
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    turn_order: Option<u64>,
    #[serde(default)]
    end_of_turn: bool,
    #[serde(default)]
    words: Vec<AaiWord>,
    speaker_label: Option<String>,
    error_code: Option<i64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct AaiWord {
    text: String,
    start: u64,
    end: u64,
    confidence: Option<f32>,
    #[serde(default)]
    word_is_final: bool,
    speaker: Option<String>,
}

impl Protocol for AssemblyAi {
    fn request(&self) -> Result<Request<()>, SttError> {
        let mut query = format!("sample_rate=16000&encoding=pcm_s16le&format_turns=false&speech_model={}", query_value(&self.model));
        if self.diarize {
            query.push_str("&speaker_labels=true");
        }
        let url = ws_url(&self.base_url, "/v3/ws", &query);
        // The key goes in raw, without a "Bearer" or "Token" prefix.
        let headers: Vec<(&str, String)> = self.api_key.iter().map(|k| ("authorization", k.expose().to_string())).collect();
        request(&url, &headers)
    }

    fn frame_samples(&self) -> usize {
        FRAME_SAMPLES
    }

    fn min_frame_samples(&self) -> usize {
        FRAME_SAMPLES
    }

    fn audio(&mut self, samples: &[i16]) -> Message {
        Message::Binary(pcm_bytes(samples).into())
    }

    fn keepalive(&self) -> Option<(Duration, Message)> {
        Some((Duration::from_secs(5), Message::Text(r#"{"type":"KeepAlive"}"#.into())))
    }

    fn finish(&mut self) -> Vec<Message> {
        vec![Message::Text(r#"{"type":"ForceEndpoint"}"#.into())]
    }

    fn close(&mut self) -> Option<Message> {
        Some(Message::Text(r#"{"type":"Terminate"}"#.into()))
    }

    fn read(&mut self, text: &str) -> Vec<Heard> {
        let m: Incoming = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return vec![Heard::Malformed(format!("not an AssemblyAI message: {e}"))],
        };
        match m.kind.as_str() {
            "Turn" => {
                let order = m.turn_order.unwrap_or(0);
                if self.turn != Some(order) {
                    self.turn = Some(order);
                    self.finals_sent = 0;
                }
                let turn_speaker = m.speaker_label.filter(|s| s != "UNKNOWN");
                let word = |w: AaiWord| VendorWord {
                    text: w.text,
                    start_ms: Some(w.start),
                    end_ms: Some(w.end),
                    confidence: w.confidence,
                    speaker: w.speaker.filter(|s| s != "UNKNOWN").or_else(|| turn_speaker.clone()),
                };
                let final_count = if m.end_of_turn { m.words.len() } else { m.words.iter().take_while(|w| w.word_is_final).count() };
                let mut words = m.words.into_iter();
                let finals: Vec<VendorWord> = words.by_ref().take(final_count).skip(self.finals_sent).map(word).collect();
                let guess: Vec<VendorWord> = words.map(word).collect();
                self.finals_sent = self.finals_sent.max(final_count);
                let mut heard = Vec::new();
                if !finals.is_empty() || m.end_of_turn {
                    heard.push(Heard::Words { words: finals, is_final: true, end_of_turn: m.end_of_turn, answer: None });
                }
                if !guess.is_empty() {
                    heard.push(Heard::Words { words: guess, is_final: false, end_of_turn: false, answer: None });
                }
                if heard.is_empty() {
                    heard.push(Heard::Nothing);
                }
                heard
            }
            "SpeechStarted" => vec![Heard::SpeechStarted],
            "Begin" | "Warning" | "SpeakerRevision" => vec![Heard::Nothing],
            "Termination" => vec![Heard::Closing],
            "Error" => {
                let code = m.error_code.map_or_else(String::new, |c| format!(" {c}"));
                vec![Heard::Failed(format!("AssemblyAI error{code}: {}", m.error.unwrap_or_default()))]
            }
            other => vec![Heard::Malformed(format!("unknown AssemblyAI message type {other:?}"))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aai() -> AssemblyAi {
        AssemblyAi::new("wss://streaming.assemblyai.com".into(), Some(Secret::new("aai-key")), DEFAULT_MODEL.into(), true)
    }

    #[test]
    fn the_request_asks_for_16_khz_pcm_and_speakers_with_the_raw_key() {
        let r = aai().request().unwrap();
        let uri = r.uri().to_string();
        assert_eq!(
            uri,
            "wss://streaming.assemblyai.com/v3/ws?sample_rate=16000&encoding=pcm_s16le&format_turns=false\
             &speech_model=universal-streaming-english&speaker_labels=true"
        );
        assert_eq!(r.headers()["authorization"], "aai-key");
    }

    #[test]
    fn cumulative_turns_become_segments_once_each() {
        let mut p = aai();
        let t1 = r#"{"type":"Turn","turn_order":0,"end_of_turn":false,"transcript":"hi","words":[
            {"text":"hi","start":1920,"end":2000,"confidence":0.87,"word_is_final":true,"speaker":"A"},
            {"text":"my","start":2800,"end":2880,"confidence":0.5,"word_is_final":false,"speaker":"A"}]}"#;
        let heard = p.read(t1);
        let [Heard::Words { words: f, is_final: true, .. }, Heard::Words { words: g, is_final: false, .. }] = heard.as_slice() else {
            panic!("{heard:?}")
        };
        assert_eq!(
            f[0],
            VendorWord { text: "hi".into(), start_ms: Some(1920), end_ms: Some(2000), confidence: Some(0.87), speaker: Some("A".into()) }
        );
        assert_eq!(g[0].text, "my");
        // The next message repeats "hi": only "my" and "name" are new finals.
        let t2 = r#"{"type":"Turn","turn_order":0,"end_of_turn":true,"words":[
            {"text":"hi","start":1920,"end":2000,"confidence":0.87,"word_is_final":true},
            {"text":"my","start":2800,"end":2880,"confidence":0.81,"word_is_final":true},
            {"text":"name","start":2960,"end":3100,"confidence":0.55,"word_is_final":false}]}"#;
        let heard = p.read(t2);
        let [Heard::Words { words, is_final: true, end_of_turn: true, .. }] = heard.as_slice() else { panic!("{heard:?}") };
        assert_eq!(words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["my", "name"]);
        // A new turn starts counting again.
        let t3 = r#"{"type":"Turn","turn_order":1,"end_of_turn":false,"words":[{"text":"ok","start":5000,"end":5100,"confidence":0.9,"word_is_final":true}]}"#;
        assert!(matches!(p.read(t3).as_slice(), [Heard::Words { words, is_final: true, .. }] if words[0].text == "ok"));
    }

    #[test]
    fn errors_end_the_stream_and_termination_closes_it() {
        let mut p = aai();
        let e = p.read(r#"{"type":"Error","error_code":3008,"error":"Session Expired"}"#);
        assert!(matches!(e.as_slice(), [Heard::Failed(m)] if m.contains("3008") && m.contains("Session Expired")), "{e:?}");
        assert_eq!(p.read(r#"{"type":"Termination","audio_duration_seconds":12}"#), vec![Heard::Closing]);
        assert_eq!(p.read(r#"{"type":"Begin","id":"x","expires_at":1767225600}"#), vec![Heard::Nothing]);
        assert_eq!(p.read(r#"{"type":"Begin","id":"x","expires_at":"2026-01-01T00:00:00Z"}"#), vec![Heard::Nothing]);
        assert!(matches!(p.read("nope").as_slice(), [Heard::Malformed(_)]));
    }
}
