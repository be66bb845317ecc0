//! Text-to-speech: text chunks in, audio frames out. The [`chunker`] cuts a token stream at clause and
//! sentence boundaries so speech starts after the first clause rather than the whole answer.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

pub mod chunker;
pub mod espeak;
pub mod fake;
#[cfg(feature = "embedded-tts")]
pub mod piper;

/// Why an engine could not speak.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TtsError {
    #[error("text-to-speech engine failed: {0}")]
    Engine(String),
    #[error("text-to-speech engine is not available: {0}")]
    Unavailable(String),
}

impl TtsError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TtsError::Engine(_) => "engine",
            TtsError::Unavailable(_) => "unavailable",
        }
    }
}

/// A boxed future, so engines can be held as `Arc<dyn TextToSpeech>`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A text-to-speech engine, shared by every session.
pub trait TextToSpeech: Send + Sync + 'static {
    /// Engine name for logs.
    fn name(&self) -> &str;

    /// Sample rate of the mono PCM16 audio this engine makes.
    fn rate_hz(&self) -> u32;

    /// Speaks `text` with `voice` (the engine's default when `None`), sending audio frames on `audio`
    /// as they are made, and resolves when the last frame is sent. Dropping the future abandons the
    /// work; a closed `audio` channel ends it early with `Ok`.
    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>>;
}
