//! What the hosted TTS adapters share: making the adapter a `[providers.NAME]` names, the URL of an
//! endpoint from the vendor SDK's base URL (its scheme turned into the one the endpoint speaks), a
//! WebSocket handshake whose failures say what went wrong without the URL or the key, HTTP statuses
//! as fallback reasons, and the count of vendor messages that could not be read.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{TextToSpeech, TtsError};
use crate::llm::config::{ProviderConfig, ProviderKind};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Vendor messages in a row that cannot be read (bad JSON, an unknown type, a field of the wrong
/// shape) before the engine counts as failed (as for speech-to-text). One stray message is
/// logged, counted and skipped.
pub const BAD_MESSAGES_MAX: u32 = 5;

/// A WebSocket to a vendor.
pub type VendorSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The adapter for a `[providers.NAME]` that speaks, with the voice its `[tts] engines` entry gives.
/// Every failure of its chunks counts in `voxgate_speech_vendor_failures_total{stage="tts",engine}`.
pub fn build(provider: &ProviderConfig, voice: Option<String>, metrics: Arc<Metrics>) -> Result<Arc<dyn TextToSpeech>, String> {
    let vendor = Vendor::new(provider, metrics.clone());
    let adapter: Arc<dyn TextToSpeech> = match provider.kind {
        ProviderKind::Openai => Arc::new(super::openai::OpenAiTts::new(vendor, voice)?),
        ProviderKind::Elevenlabs => Arc::new(super::elevenlabs::ElevenLabsTts::new(vendor, voice)?),
        ProviderKind::Cartesia => Arc::new(super::cartesia::CartesiaTts::new(vendor, voice)?),
        ProviderKind::Deepgram => Arc::new(super::deepgram::DeepgramTts::new(vendor, voice)?),
        other => return Err(format!("tts: provider {:?} is of kind {other:?}, which does not speak", provider.id)),
    };
    Ok(Arc::new(Counted { adapter, metrics }))
}

/// A vendor adapter whose failures are counted.
struct Counted {
    adapter: Arc<dyn TextToSpeech>,
    metrics: Arc<Metrics>,
}

impl Counted {
    fn count(&self, work: super::BoxFuture<Result<(), TtsError>>) -> super::BoxFuture<Result<(), TtsError>> {
        let (metrics, name) = (self.metrics.clone(), self.adapter.name().to_string());
        Box::pin(async move {
            let result = work.await;
            if result.is_err() {
                metrics.inc("voxgate_speech_vendor_failures_total", &[("stage", "tts"), ("engine", &name)]);
            }
            result
        })
    }
}

impl TextToSpeech for Counted {
    fn name(&self) -> &str {
        self.adapter.name()
    }

    fn rate_hz(&self) -> u32 {
        self.adapter.rate_hz()
    }

    fn synthesize(
        &self,
        text: String,
        voice: Option<String>,
        audio: tokio::sync::mpsc::Sender<Vec<i16>>,
    ) -> super::BoxFuture<Result<(), TtsError>> {
        self.count(self.adapter.synthesize(text, voice, audio))
    }

    fn speak(&self, chunk: super::Chunk, out: tokio::sync::mpsc::Sender<super::Spoken>) -> super::BoxFuture<Result<(), TtsError>> {
        self.count(self.adapter.speak(chunk, out))
    }
}

/// A vendor as its adapter sees it: its name, base URL, key and the server's metrics.
#[derive(Clone)]
pub struct Vendor {
    pub id: String,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl Vendor {
    pub fn new(provider: &ProviderConfig, metrics: Arc<Metrics>) -> Vendor {
        Vendor {
            id: provider.id.clone(),
            base_url: provider.base_url.trim_end_matches('/').to_string(),
            api_key: provider.api_key.clone(),
            connect_timeout: Duration::from_millis(provider.connect_timeout_ms.max(1)),
            metrics,
        }
    }

    /// `path` on the base URL over HTTP (`ws://` becomes `http://`, `wss://` `https://`).
    pub fn http_url(&self, path: &str) -> String {
        let base = &self.base_url;
        let base = if let Some(rest) = base.strip_prefix("wss://") {
            format!("https://{rest}")
        } else if let Some(rest) = base.strip_prefix("ws://") {
            format!("http://{rest}")
        } else {
            base.clone()
        };
        format!("{base}{path}")
    }

    /// `path` on the base URL over WebSocket (`http://` becomes `ws://`, `https://` `wss://`).
    pub fn ws_url(&self, path: &str) -> String {
        let base = &self.base_url;
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.clone()
        };
        format!("{base}{path}")
    }

    /// The voice a chunk asks for: the session's (`VOICE`, or `NAME:VOICE` with this vendor's
    /// name), unless it is none or this vendor's own name (the session's default voice is the
    /// engine's name), then `configured`.
    pub fn voice(&self, asked: Option<String>, configured: &str) -> String {
        let asked = asked.map(|v| match v.strip_prefix(self.id.as_str()).and_then(|rest| rest.strip_prefix(':')) {
            Some(own) => own.to_string(),
            None => v,
        });
        asked.filter(|v| !v.is_empty() && *v != self.id).unwrap_or_else(|| configured.to_string())
    }

    /// The key, or an error that says which variable to set.
    pub fn key(&self) -> Result<&Secret, String> {
        self.api_key.as_ref().ok_or_else(|| format!("tts: provider {:?} has no api_key (set it, or its vendor's key variable)", self.id))
    }

    /// `text` with the key replaced by `***` wherever it appears (a URL with the key in its query,
    /// a vendor echoing it back).
    pub fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "***"),
            _ => text.to_string(),
        }
    }

    /// A failure of this vendor, its message stripped of the key.
    pub fn error(&self, reason: &'static str, message: impl AsRef<str>) -> TtsError {
        TtsError::Vendor { vendor: self.id.clone(), reason, message: self.redact(message.as_ref()) }
    }

    /// Opens a WebSocket to `url` with `headers`, within the connect timeout. A refused upgrade
    /// names its status (429 is `rate_limited`); nothing in the error shows the URL or the key.
    pub async fn connect(&self, url: &str, headers: &[(&str, String)]) -> Result<VendorSocket, TtsError> {
        let mut request = url.into_client_request().map_err(|_| self.error("connect", "the WebSocket URL is not valid"))?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| self.error("connect", format!("bad header name {name}")))?;
            let value = HeaderValue::from_str(value).map_err(|_| self.error("connect", format!("the {name} header is not valid")))?;
            request.headers_mut().insert(name, value);
        }
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(crate::engine::vendor_ws_config()), true);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => Err(self.error("connect", format!("no WebSocket within {} ms", self.connect_timeout.as_millis()))),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                Err(self.error(status_reason(status), format!("the WebSocket upgrade was refused with HTTP {status}: {body}")))
            }
            Ok(Err(e)) => Err(self.error("connect", format!("cannot open the WebSocket: {}", describe_ws_error(&e)))),
        }
    }

    /// Counts a vendor message that could not be read: logged (without its text, which may be
    /// long), counted in `voxgate_speech_vendor_bad_messages_total`; `Err` after [`BAD_MESSAGES_MAX`] in a row.
    pub fn bad_message(&self, in_a_row: &mut u32, what: &str) -> Result<(), TtsError> {
        *in_a_row += 1;
        self.metrics.inc("voxgate_speech_vendor_bad_messages_total", &[("stage", "tts"), ("engine", &self.id)]);
        tracing::warn!(vendor = %self.id, what = %self.redact(what), in_a_row = *in_a_row, "unreadable text-to-speech vendor message");
        if *in_a_row >= BAD_MESSAGES_MAX {
            return Err(self.error("bad_messages", format!("{} unreadable messages in a row (last: {})", in_a_row, self.redact(what))));
        }
        Ok(())
    }
}

/// A WebSocket error in a few words, never with a URL (tungstenite's URL errors may hold one).
fn describe_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => io.kind().to_string(),
        Error::Tls(_) => "TLS failed".into(),
        Error::Url(_) => "the URL is not valid".into(),
        Error::Protocol(p) => p.to_string(),
        Error::ConnectionClosed | Error::AlreadyClosed => "closed".into(),
        _ => "handshake failed".into(),
    }
}

/// Whether `s` can go into a URL path or query as it is: a vendor's voice or model id (letters,
/// digits, `-` and `_`).
pub fn url_safe(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A vendor's HTTP status as a fallback reason.
pub fn status_reason(status: u16) -> &'static str {
    match status {
        401 | 403 => "unauthorized",
        408 => "timeout",
        429 => "rate_limited",
        400 | 404 | 413 | 422 => "bad_request",
        500..=599 => "server_error",
        _ => "vendor_error",
    }
}

/// PCM16 little-endian bytes to samples; an odd trailing byte is kept in `carry` for the next piece.
pub fn pcm16_samples(carry: &mut Option<u8>, bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::with_capacity(bytes.len() / 2 + 1);
    let mut rest = bytes;
    if let Some(low) = carry.take() {
        match rest.split_first() {
            Some((high, tail)) => {
                out.push(i16::from_le_bytes([low, *high]));
                rest = tail;
            }
            None => {
                *carry = Some(low);
                return out;
            }
        }
    }
    let pairs = rest.chunks_exact(2);
    if let [odd] = pairs.remainder() {
        *carry = Some(*odd);
    }
    out.extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]])));
    out
}

/// Audio in frames of about 20 ms, so the session paces and joins it as it does an engine's frames.
pub async fn send_frames(out: &tokio::sync::mpsc::Sender<super::Spoken>, samples: Vec<i16>, rate_hz: u32) -> Result<(), ()> {
    let frame = (rate_hz as usize / 50).max(1);
    if samples.len() <= frame {
        if samples.is_empty() {
            return Ok(());
        }
        return out.send(super::Spoken::Audio { samples, rate_hz }).await.map_err(|_| ());
    }
    for piece in samples.chunks(frame) {
        out.send(super::Spoken::Audio { samples: piece.to_vec(), rate_hz }).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Word ends from words and their end times, in ms into the chunk: each word's non-blank characters
/// counted on from the ones before.
pub fn word_ends<'a>(chars_before: &mut usize, words: impl IntoIterator<Item = (&'a str, f64)>) -> Vec<super::WordEnd> {
    words
        .into_iter()
        .filter_map(|(word, end_ms)| {
            let n = word.chars().filter(|c| !c.is_whitespace()).count();
            if n == 0 || !end_ms.is_finite() {
                return None;
            }
            *chars_before += n;
            Some(super::WordEnd { chars: *chars_before, end_ms })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor(base: &str, key: &str) -> Vendor {
        Vendor {
            id: "v".into(),
            base_url: base.into(),
            api_key: Some(Secret::new(key)),
            connect_timeout: Duration::from_secs(1),
            metrics: Arc::new(Metrics::default()),
        }
    }

    #[test]
    fn endpoints_take_the_scheme_they_speak() {
        let v = vendor("http://127.0.0.1:9/x", "k");
        assert_eq!(v.ws_url("/tts/websocket"), "ws://127.0.0.1:9/x/tts/websocket");
        assert_eq!(v.http_url("/a"), "http://127.0.0.1:9/x/a");
        let v = vendor("wss://api.example", "k");
        assert_eq!((v.ws_url("/a"), v.http_url("/a")), ("wss://api.example/a".into(), "https://api.example/a".into()));
        let v = vendor("https://api.example", "k");
        assert_eq!(v.ws_url("/a"), "wss://api.example/a");
    }

    #[test]
    fn a_session_voice_may_name_the_vendor() {
        let v = vendor("http://h", "k");
        assert_eq!(v.voice(None, "alloy"), "alloy");
        assert_eq!(v.voice(Some("v".into()), "alloy"), "alloy");
        assert_eq!(v.voice(Some("v:coral".into()), "alloy"), "coral");
        assert_eq!(v.voice(Some("coral".into()), "alloy"), "coral");
        assert_eq!(v.voice(Some("v:".into()), "alloy"), "alloy");
    }

    #[test]
    fn errors_never_hold_the_key() {
        let v = vendor("http://h", "sk-canary-123");
        let e = v.error("connect", "wss://h/tts?api_key=sk-canary-123 refused").to_string();
        assert!(!e.contains("sk-canary-123") && e.contains("api_key=***"), "{e}");
    }

    #[test]
    fn bad_messages_fail_the_engine_after_some_in_a_row() {
        let v = vendor("http://h", "k");
        let mut n = 0;
        for _ in 1..BAD_MESSAGES_MAX {
            assert!(v.bad_message(&mut n, "x").is_ok());
        }
        assert_eq!(v.bad_message(&mut n, "x").unwrap_err().kind(), "bad_messages");
        assert!(v.metrics.render().contains(r#"voxgate_speech_vendor_bad_messages_total{stage="tts",engine="v"} 5"#));
    }

    #[test]
    fn pcm_split_at_odd_bytes_keeps_every_sample() {
        let samples: Vec<i16> = vec![1, -2, 300, -32768, 32767];
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut carry = None;
        let mut out = Vec::new();
        for piece in [&bytes[..3], &bytes[3..4], &bytes[4..9], &bytes[9..]] {
            out.extend(pcm16_samples(&mut carry, piece));
        }
        assert_eq!((out, carry), (samples, None));
    }

    #[tokio::test]
    async fn a_failed_handshake_is_an_error_that_names_no_url() {
        // A server that is not TLS: rustls is set up (one crypto provider) and the handshake fails.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n\r\nnot tls").await;
            }
        });
        let v = vendor(&format!("https://{addr}"), "sk-canary-123");
        let url = format!("{}?api_key=sk-canary-123", v.ws_url("/tts/websocket"));
        let err = v.connect(&url, &[]).await.unwrap_err();
        assert_eq!(err.kind(), "connect");
        let text = err.to_string();
        assert!(!text.contains("sk-canary-123") && !text.contains("127.0.0.1"), "{text}");
    }
}
