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

    /// Loads whatever the engine loads lazily, now. Most engines have nothing to load.
    fn warm_up(&self) -> BoxFuture<Result<(), TtsError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Loads an engine.
pub type TtsLoader = Box<dyn Fn() -> Result<std::sync::Arc<dyn TextToSpeech>, TtsError> + Send + Sync>;

/// An engine loaded on first use (or by [`LazyTts::warm_up`]) on a blocking thread. Its rate must be
/// known before loading (read from the voice's metadata).
pub struct LazyTts {
    name: String,
    rate_hz: u32,
    loader: std::sync::Arc<TtsLoader>,
    engine: std::sync::Arc<tokio::sync::OnceCell<Result<std::sync::Arc<dyn TextToSpeech>, TtsError>>>,
}

impl LazyTts {
    pub fn new(name: impl Into<String>, rate_hz: u32, loader: TtsLoader) -> LazyTts {
        LazyTts { name: name.into(), rate_hz, loader: std::sync::Arc::new(loader), engine: Default::default() }
    }
}

async fn load_tts(
    loader: &std::sync::Arc<TtsLoader>,
    cell: &tokio::sync::OnceCell<Result<std::sync::Arc<dyn TextToSpeech>, TtsError>>,
) -> Result<std::sync::Arc<dyn TextToSpeech>, TtsError> {
    cell.get_or_init(|| {
        let loader = loader.clone();
        async move {
            tokio::task::spawn_blocking(move || loader())
                .await
                .unwrap_or_else(|e| Err(TtsError::Unavailable(format!("loading the engine failed: {e}"))))
        }
    })
    .await
    .clone()
}

impl TextToSpeech for LazyTts {
    fn name(&self) -> &str {
        &self.name
    }

    fn rate_hz(&self) -> u32 {
        self.rate_hz
    }

    /// A failure is kept and reported by every later call.
    fn warm_up(&self) -> BoxFuture<Result<(), TtsError>> {
        let (loader, cell) = (self.loader.clone(), self.engine.clone());
        Box::pin(async move { load_tts(&loader, &cell).await.map(|_| ()) })
    }

    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        let (loader, cell, rate_hz) = (self.loader.clone(), self.engine.clone(), self.rate_hz);
        Box::pin(async move {
            let engine = load_tts(&loader, &cell).await?;
            if engine.rate_hz() != rate_hz {
                return Err(TtsError::Engine(format!("engine speaks at {} Hz, announced {rate_hz} Hz", engine.rate_hz())));
            }
            engine.synthesize(text, voice, audio).await
        })
    }
}
