//! OpenAI text-to-speech: `POST {base_url}/audio/speech` (base URL as the SDK has it,
//! `https://api.openai.com/v1`) with `response_format: "pcm"`, raw 24 kHz s16le mono in a chunked
//! body that plays from its first bytes. One request per chunk: the endpoint has no context to keep
//! and no word alignment. Errors are OpenAI error objects (`{"error": {"message", "type", "code"}}`).

use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::vendor::{pcm16_samples, send_frames, status_reason, Vendor};
use super::{synthesize_by_speaking, BoxFuture, Chunk, Spoken, TextToSpeech, TtsError};

/// The rate of `response_format: "pcm"`.
pub const RATE_HZ: u32 = 24_000;
pub const DEFAULT_MODEL: &str = "gpt-4o-mini-tts";
pub const DEFAULT_VOICE: &str = "alloy";
/// The endpoint's limit on `input`.
const INPUT_CHARS_MAX: usize = 4096;

pub struct OpenAiTts {
    vendor: Vendor,
    /// The configured voice (`openai:VOICE`); a `MODEL/VOICE` form chooses the model too.
    voice: String,
    model: String,
    client: reqwest::Client,
}

impl OpenAiTts {
    pub fn new(vendor: Vendor, voice: Option<String>) -> Result<OpenAiTts, String> {
        let (model, voice) = match voice.as_deref().and_then(|v| v.split_once('/')) {
            Some((m, v)) => (m.to_string(), v.to_string()),
            None => (DEFAULT_MODEL.to_string(), voice.unwrap_or_else(|| DEFAULT_VOICE.to_string())),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(vendor.connect_timeout)
            .tcp_nodelay(true)
            // A redirect could carry the key to another host: a 3xx is a vendor failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("tts: provider {:?}: cannot build an HTTP client: {e}", vendor.id))?;
        Ok(OpenAiTts { vendor, voice, model, client })
    }
}

impl TextToSpeech for OpenAiTts {
    fn name(&self) -> &str {
        &self.vendor.id
    }

    fn rate_hz(&self) -> u32 {
        RATE_HZ
    }

    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        synthesize_by_speaking(self, text, voice, audio)
    }

    fn speak(&self, chunk: Chunk, out: mpsc::Sender<Spoken>) -> BoxFuture<Result<(), TtsError>> {
        let vendor = self.vendor.clone();
        let voice = vendor.voice(chunk.voice, &self.voice);
        let body = json!({
            "model": self.model,
            "voice": voice,
            "input": chunk.text.chars().take(INPUT_CHARS_MAX).collect::<String>(),
            "response_format": "pcm",
        });
        // Not reqwest's `json` (a feature only the tests enable): the body written here.
        let request = self
            .client
            .post(vendor.http_url("/audio/speech"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        Box::pin(async move {
            let key = vendor.key().map_err(|m| vendor.error("unauthorized", m))?;
            let response = request.bearer_auth(key.expose()).send().await.map_err(|e| {
                let reason = if e.is_timeout() { "timeout" } else { "connect" };
                // reqwest's message may name the URL; it holds no key (the key is a header).
                vendor.error(reason, format!("request failed: {}", e.without_url()))
            })?;
            let status = response.status().as_u16();
            if !(200..300).contains(&status) {
                return Err(api_error(&vendor, status, &error_body(response).await));
            }
            let mut body = response.bytes_stream();
            let mut carry = None;
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| vendor.error("stream", format!("the audio stream broke: {}", e.without_url())))?;
                let samples = pcm16_samples(&mut carry, &piece);
                if send_frames(&out, samples, RATE_HZ).await.is_err() {
                    return Ok(()); // the session stopped listening
                }
            }
            Ok(())
        })
    }
}

/// At most this much of an error body is read: it is only quoted, and a vendor (or a proxy on the
/// way) may send one without end.
const ERROR_BODY_MAX: usize = 64 * 1024;

/// The start of an error body, up to [`ERROR_BODY_MAX`]; the rest is not read.
async fn error_body(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut pieces = response.bytes_stream();
    while let Some(Ok(piece)) = pieces.next().await {
        body.extend_from_slice(&piece[..piece.len().min(ERROR_BODY_MAX - body.len())]);
        if body.len() == ERROR_BODY_MAX {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// An OpenAI error object (or whatever came) as a failure with its status's reason.
fn api_error(vendor: &Vendor, status: u16, body: &str) -> TtsError {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    let message = error.and_then(|e| e["message"].as_str()).map(str::to_string).unwrap_or_else(|| body.chars().take(200).collect());
    let code = error.and_then(|e| e["code"].as_str().or(e["type"].as_str())).unwrap_or("");
    let reason = if code == "insufficient_quota" { "quota" } else { status_reason(status) };
    vendor.error(reason, format!("HTTP {status} {code}: {message}"))
}
