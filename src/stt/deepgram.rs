//! Deepgram live streaming (`/v1/listen`): raw PCM16 in binary frames, JSON results out.
//!
//! Results are segments: `is_final` ones add up and are never revised, interim ones replace the
//! last guess; `speech_final` (endpointing), `from_finalize` (the answer to our `Finalize`) and
//! `UtteranceEnd` end a turn. Times are seconds of the audio received. The socket closes after
//! 10 s without audio, so `KeepAlive` goes out every 4 s while nobody speaks; `CloseStream` ends
//! the call (the last results, `Metadata`, then the close). Never an empty binary frame: that is the
//! legacy close signal.

use std::time::Duration;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::Message;

use super::stream::{pcm_bytes, request, ws_url, Heard, Protocol, VendorWord};
use super::SttError;
use crate::secret::Secret;

pub const DEFAULT_MODEL: &str = "nova-3";

/// Samples per audio message: 40 ms.
const FRAME_SAMPLES: usize = 640;

/// One call's stream.
pub struct Deepgram {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
    pub diarize: bool,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    #[serde(default)]
    from_finalize: bool,
    /// An object in `Results`, a list of channel numbers in `UtteranceEnd` and `SpeechStarted`.
    channel: Option<serde_json::Value>,
    description: Option<String>,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    words: Vec<DgWord>,
}

#[derive(Deserialize)]
struct DgWord {
    word: String,
    punctuated_word: Option<String>,
    start: f64,
    end: f64,
    confidence: Option<f32>,
    speaker: Option<u32>,
}

fn ms(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

impl Protocol for Deepgram {
    fn request(&self) -> Result<Request<()>, SttError> {
        let mut query = format!(
            "model={}&encoding=linear16&sample_rate=16000&channels=1&interim_results=true&punctuate=true&smart_format=true\
             &endpointing=300&utterance_end_ms=1000&vad_events=true",
            super::stream::query_value(&self.model)
        );
        if self.diarize {
            query.push_str("&diarize=true");
        }
        let url = ws_url(&self.base_url, "/v1/listen", &query);
        let headers: Vec<(&str, String)> = self.api_key.iter().map(|k| ("authorization", format!("Token {}", k.expose()))).collect();
        request(&url, &headers)
    }

    fn frame_samples(&self) -> usize {
        FRAME_SAMPLES
    }

    fn audio(&mut self, samples: &[i16]) -> Message {
        Message::Binary(pcm_bytes(samples).into())
    }

    fn keepalive(&self) -> Option<(Duration, Message)> {
        Some((Duration::from_secs(4), Message::Text(r#"{"type":"KeepAlive"}"#.into())))
    }

    fn finish(&mut self) -> Vec<Message> {
        vec![Message::Text(r#"{"type":"Finalize"}"#.into())]
    }

    fn close(&mut self) -> Option<Message> {
        Some(Message::Text(r#"{"type":"CloseStream"}"#.into()))
    }

    fn read(&mut self, text: &str) -> Vec<Heard> {
        let m: Incoming = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return vec![Heard::Malformed(format!("not a Deepgram message: {e}"))],
        };
        let heard = match m.kind.as_str() {
            "Results" => {
                let channel: Channel = match m.channel.map(serde_json::from_value).transpose() {
                    Ok(c) => c.unwrap_or(Channel { alternatives: Vec::new() }),
                    Err(e) => return vec![Heard::Malformed(format!("Deepgram results without readable words: {e}"))],
                };
                let words = Some(channel)
                    .and_then(|c| c.alternatives.into_iter().next())
                    .map(|a| a.words)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|w| VendorWord {
                        text: w.punctuated_word.unwrap_or(w.word),
                        start_ms: Some(ms(w.start)),
                        end_ms: Some(ms(w.end)),
                        confidence: w.confidence,
                        speaker: w.speaker.map(|s| s.to_string()),
                    })
                    .collect();
                let is_final = m.is_final || m.speech_final || m.from_finalize;
                Heard::Words { words, is_final, end_of_turn: m.speech_final || m.from_finalize, answer: None }
            }
            "UtteranceEnd" => Heard::Words { words: Vec::new(), is_final: true, end_of_turn: true, answer: None },
            "SpeechStarted" => Heard::SpeechStarted,
            "Metadata" => Heard::Nothing,
            "Error" => {
                // A client message Deepgram could not take; the stream goes on.
                let what = m.description.or(m.variant).unwrap_or_default();
                tracing::warn!(what = %what, "Deepgram refused a message");
                Heard::Nothing
            }
            other => Heard::Malformed(format!("unknown Deepgram message type {other:?}")),
        };
        vec![heard]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deepgram() -> Deepgram {
        Deepgram {
            base_url: "https://api.deepgram.com".into(),
            api_key: Some(Secret::new("dg-key")),
            model: "nova-3".into(),
            diarize: true,
        }
    }

    #[test]
    fn the_request_names_the_audio_and_carries_the_key_in_a_header() {
        let r = deepgram().request().unwrap();
        let uri = r.uri().to_string();
        assert!(uri.starts_with("wss://api.deepgram.com/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000"), "{uri}");
        assert!(uri.contains("interim_results=true") && uri.contains("diarize=true") && uri.contains("utterance_end_ms=1000"), "{uri}");
        assert!(!uri.contains("dg-key"));
        assert_eq!(r.headers()["authorization"], "Token dg-key");
    }

    #[test]
    fn results_become_words_in_ms_with_speakers() {
        let text = r#"{"type":"Results","channel_index":[0,1],"start":1.0,"duration":0.8,"is_final":true,"speech_final":false,
            "channel":{"alternatives":[{"transcript":"book a","confidence":0.9,"words":[
              {"word":"book","start":1.02,"end":1.3,"confidence":0.97,"punctuated_word":"Book","speaker":1},
              {"word":"a","start":1.3,"end":1.41,"confidence":0.62,"speaker":1}]}]}}"#;
        let heard = deepgram().read(text);
        let [Heard::Words { words, is_final: true, end_of_turn: false, answer: None }] = heard.as_slice() else { panic!("{heard:?}") };
        assert_eq!(
            words[0],
            VendorWord { text: "Book".into(), start_ms: Some(1020), end_ms: Some(1300), confidence: Some(0.97), speaker: Some("1".into()) }
        );
        assert_eq!((words[1].text.as_str(), words[1].start_ms, words[1].confidence), ("a", Some(1300), Some(0.62)));
        let end = r#"{"type":"Results","is_final":true,"speech_final":true,"channel":{"alternatives":[{"transcript":"","words":[]}]}}"#;
        assert!(matches!(deepgram().read(end).as_slice(), [Heard::Words { is_final: true, end_of_turn: true, .. }]));
        let end = r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.1}"#;
        assert!(matches!(deepgram().read(end).as_slice(), [Heard::Words { end_of_turn: true, .. }]));
    }

    #[test]
    fn odd_messages_are_malformed_not_panics() {
        for text in ["{", "[]", r#"{"type":"Surprise"}"#, r#"{"type":"Results","channel":{"alternatives":[{"words":[{"word":1}]}]}}"#] {
            assert!(matches!(deepgram().read(text).as_slice(), [Heard::Malformed(_)]), "{text}");
        }
        assert_eq!(deepgram().read(r#"{"type":"Metadata","request_id":"x"}"#), vec![Heard::Nothing]);
    }
}
