//! OpenAI Realtime in transcription mode (`/v1/realtime?intent=transcription`): base64 PCM16 at
//! 24 kHz in JSON appends, transcripts per committed item out.
//!
//! The session is opened with the service's turn detection off: our detector ends each utterance
//! and `input_audio_buffer.commit` asks for its transcript. Completed events may come out of order,
//! so each is matched to its utterance by its item id, in the order the commits were acknowledged.
//! The service gives no word times: the words of a transcript share its utterance's audio evenly
//! (docs/speech.md says so). Word confidence comes from the token log-probabilities when the
//! service sends them.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::Message;

use super::stream::{request, ws_url, Heard, Protocol, VendorWord};
use super::SttError;
use crate::audio::Resampler;
use crate::secret::Secret;

pub const DEFAULT_MODEL: &str = "gpt-4o-transcribe";

/// The only PCM rate the service takes.
const RATE_HZ: u32 = 24_000;

/// Samples (at 16 kHz) per append: 100 ms.
const FRAME_SAMPLES: usize = 1_600;

/// The most text of one item's deltas kept (an utterance's transcript is far shorter).
const TEXT_SO_FAR_MAX: usize = 64 * 1024;

/// One call's stream.
pub struct OpenAiStt {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
    resampler: Option<Resampler>,
    /// Commits acknowledged so far, and which commit each item answers.
    committed: u64,
    items: HashMap<String, u64>,
    text: HashMap<String, String>,
}

impl OpenAiStt {
    pub fn new(base_url: String, api_key: Option<Secret>, model: String) -> OpenAiStt {
        OpenAiStt {
            base_url,
            api_key,
            model,
            resampler: Resampler::new(super::STT_RATE_HZ, RATE_HZ).ok(),
            committed: 0,
            items: HashMap::new(),
            text: HashMap::new(),
        }
    }

    fn words(text: &str, confidence: Option<f32>) -> Vec<VendorWord> {
        text.split_whitespace().map(|w| VendorWord { text: w.to_string(), confidence, ..VendorWord::default() }).collect()
    }
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    item_id: Option<String>,
    delta: Option<String>,
    transcript: Option<String>,
    logprobs: Option<Vec<Logprob>>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Logprob {
    logprob: f64,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

impl Protocol for OpenAiStt {
    fn request(&self) -> Result<Request<()>, SttError> {
        let url = ws_url(&self.base_url, "/realtime", "intent=transcription");
        let headers: Vec<(&str, String)> = self.api_key.iter().map(|k| ("authorization", format!("Bearer {}", k.expose()))).collect();
        request(&url, &headers)
    }

    fn opening(&mut self) -> Vec<Message> {
        let update = serde_json::json!({
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {"input": {
                    "format": {"type": "audio/pcm", "rate": RATE_HZ},
                    "transcription": {"model": self.model},
                    "turn_detection": null,
                }},
                "include": ["item.input_audio_transcription.logprobs"],
            }
        });
        vec![Message::Text(update.to_string().into())]
    }

    fn frame_samples(&self) -> usize {
        FRAME_SAMPLES
    }

    fn audio(&mut self, samples: &[i16]) -> Message {
        let mut out = Vec::with_capacity(samples.len() * 3 / 2 + 16);
        match self.resampler.as_mut() {
            Some(r) => r.process(samples, &mut out),
            None => out.extend_from_slice(samples),
        }
        let bytes: Vec<u8> = out.iter().flat_map(|s| s.to_le_bytes()).collect();
        let audio = base64::engine::general_purpose::STANDARD.encode(bytes);
        Message::Text(format!(r#"{{"type":"input_audio_buffer.append","audio":"{audio}"}}"#).into())
    }

    fn keepalive(&self) -> Option<(Duration, Message)> {
        None
    }

    fn finish(&mut self) -> Vec<Message> {
        vec![Message::Text(r#"{"type":"input_audio_buffer.commit"}"#.into())]
    }

    fn close(&mut self) -> Option<Message> {
        None
    }

    fn ends_turns(&self) -> bool {
        // Its turn detection is off: the session commits.
        false
    }

    fn speaks_while_listening(&self) -> bool {
        // gpt-4o-transcribe and gpt-4o-mini-transcribe send their deltas after the commit.
        false
    }

    fn read(&mut self, text: &str) -> Vec<Heard> {
        let m: Incoming = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return vec![Heard::Malformed(format!("not a Realtime event: {e}"))],
        };
        let item = m.item_id.clone().unwrap_or_default();
        match m.kind.as_str() {
            "input_audio_buffer.committed" => {
                self.items.insert(item, self.committed);
                self.committed += 1;
                vec![Heard::Nothing]
            }
            "conversation.item.input_audio_transcription.delta" => {
                let Some(&answer) = self.items.get(&item) else { return vec![Heard::Nothing] };
                let so_far = self.text.entry(item).or_default();
                // Bounded: a vendor that never completes the item cannot grow it for ever.
                let delta = m.delta.as_deref().unwrap_or("");
                if so_far.len() + delta.len() <= TEXT_SO_FAR_MAX {
                    so_far.push_str(delta);
                }
                vec![Heard::Words { words: Self::words(so_far, None), is_final: false, end_of_turn: false, answer: Some(answer) }]
            }
            "conversation.item.input_audio_transcription.completed" => {
                let Some(answer) = self.items.remove(&item) else {
                    return vec![Heard::Malformed(format!("a transcript for item {item:?}, which was never committed"))];
                };
                self.text.remove(&item);
                // The mean token probability, as the words' confidence.
                let confidence = m.logprobs.as_ref().filter(|l| !l.is_empty()).map(|l| {
                    let mean = l.iter().map(|t| t.logprob).sum::<f64>() / l.len() as f64;
                    mean.exp().clamp(0.0, 1.0) as f32
                });
                let words = Self::words(m.transcript.as_deref().unwrap_or(""), confidence);
                vec![Heard::Words { words, is_final: true, end_of_turn: true, answer: Some(answer) }]
            }
            "conversation.item.input_audio_transcription.failed" => {
                let message = m.error.and_then(|e| e.message).unwrap_or_default();
                vec![Heard::Failed(format!("OpenAI could not transcribe an utterance: {message}"))]
            }
            "error" => {
                let error = m.error.unwrap_or(ErrorBody { code: None, message: None });
                if error.code.as_deref() == Some("input_audio_buffer_commit_empty") {
                    // Too little audio to commit: that utterance has no words, and the stream goes on.
                    let answer = self.committed;
                    self.committed += 1;
                    return vec![Heard::Words { words: Vec::new(), is_final: true, end_of_turn: true, answer: Some(answer) }];
                }
                vec![Heard::Failed(format!("OpenAI error {}: {}", error.code.unwrap_or_default(), error.message.unwrap_or_default()))]
            }
            "session.created"
            | "session.updated"
            | "input_audio_buffer.speech_started"
            | "input_audio_buffer.speech_stopped"
            | "conversation.item.added"
            | "conversation.item.done"
            | "conversation.item.created"
            | "rate_limits.updated" => {
                vec![Heard::Nothing]
            }
            other => vec![Heard::Malformed(format!("unknown Realtime event type {other:?}"))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai() -> OpenAiStt {
        OpenAiStt::new("https://api.openai.com/v1".into(), Some(Secret::new("sk-x")), DEFAULT_MODEL.into())
    }

    #[test]
    fn the_session_asks_for_transcription_without_turn_detection() {
        let mut p = openai();
        let r = p.request().unwrap();
        assert_eq!(r.uri().to_string(), "wss://api.openai.com/v1/realtime?intent=transcription");
        assert_eq!(r.headers()["authorization"], "Bearer sk-x");
        let opening = p.opening();
        let [Message::Text(update)] = opening.as_slice() else { panic!("{opening:?}") };
        let v: serde_json::Value = serde_json::from_str(update).unwrap();
        assert_eq!(v["session"]["type"], "transcription");
        assert_eq!(v["session"]["audio"]["input"]["format"]["rate"], 24_000);
        assert!(v["session"]["audio"]["input"]["turn_detection"].is_null());
        assert_eq!(v["session"]["audio"]["input"]["transcription"]["model"], "gpt-4o-transcribe");
        // 100 ms at 16 kHz goes out as about 100 ms at 24 kHz.
        let Message::Text(append) = p.audio(&[0; 1_600]) else { panic!() };
        let v: serde_json::Value = serde_json::from_str(&append).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(v["audio"].as_str().unwrap()).unwrap();
        assert!((4_700..=4_800).contains(&bytes.len()), "{}", bytes.len());
    }

    #[test]
    fn transcripts_answer_their_commit_even_out_of_order() {
        let mut p = openai();
        p.read(r#"{"type":"input_audio_buffer.committed","item_id":"item_A","previous_item_id":null}"#);
        p.read(r#"{"type":"input_audio_buffer.committed","item_id":"item_B","previous_item_id":"item_A"}"#);
        let b = p.read(r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_B","transcript":"Two.","logprobs":[{"token":"Two","logprob":-0.1,"bytes":[]}]}"#);
        let [Heard::Words { words, answer: Some(1), end_of_turn: true, .. }] = b.as_slice() else { panic!("{b:?}") };
        assert_eq!(words[0].text, "Two.");
        assert!((words[0].confidence.unwrap() - 0.905).abs() < 0.01);
        let d = p.read(r#"{"type":"conversation.item.input_audio_transcription.delta","item_id":"item_A","delta":"Book a "}"#);
        assert!(matches!(d.as_slice(), [Heard::Words { is_final: false, answer: Some(0), words, .. }] if words.len() == 2));
        let a =
            p.read(r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_A","transcript":"Book a table."}"#);
        assert!(matches!(a.as_slice(), [Heard::Words { answer: Some(0), words, .. }] if words.len() == 3 && words[0].confidence.is_none()));
        let empty = p.read(r#"{"type":"error","error":{"type":"invalid_request_error","code":"input_audio_buffer_commit_empty","message":"buffer too small"}}"#);
        assert!(matches!(empty.as_slice(), [Heard::Words { answer: Some(2), words, .. }] if words.is_empty()));
        let fatal = p.read(r#"{"type":"error","error":{"type":"server_error","code":"boom","message":"bad"}}"#);
        assert!(matches!(fatal.as_slice(), [Heard::Failed(m)] if m.contains("boom")));
    }
}
