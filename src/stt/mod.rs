//! Speech-to-text: audio of one user utterance in, partial and final transcripts out (words with
//! timings, confidence, speaker). Turn detection (the energy VAD) lives here too, because it reads the
//! same audio; the session decides what a turn means.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};

#[cfg(feature = "embedded-stt")]
pub mod embedded;
pub mod fake;
pub mod vad;
pub mod wer;

/// Sample rate of the audio every STT engine receives (mono PCM16). Transports resample to it.
pub const STT_RATE_HZ: u32 = 16_000;

/// One recognised word. Times count from the start of the session's input audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// 0.0 to 1.0.
    pub confidence: f32,
}

/// What an engine heard in one utterance, so far (partial) or in the end (final).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transcript {
    pub text: String,
    pub words: Vec<Word>,
    /// The speaker's label when the engine tells speakers apart.
    pub speaker: Option<String>,
    /// Mean word confidence, 0.0 to 1.0.
    pub confidence: f32,
}

/// One utterance to transcribe: audio frames (mono PCM16 at [`STT_RATE_HZ`]) arrive on `audio` as the
/// user speaks; the channel closes when the utterance ends (VAD stop or manual commit).
pub struct Utterance {
    /// Where the utterance's first sample sits in the session's input audio, in ms.
    pub start_ms: u64,
    /// The utterance's number in its session, from 0 (scripted fakes pick their line by it).
    pub ordinal: u32,
    pub audio: mpsc::Receiver<Vec<i16>>,
    /// Where the speaker has paused, when the session's VAD reports pauses: `Some(n)` once the first
    /// `n` samples of the utterance end in a pause, `None` again if speech resumes. The value when
    /// `audio` closes is final: `Some(n)` then means nothing voiced came after sample `n`, so an
    /// engine may answer with a transcript of those samples it started at the pause.
    pub pause: Option<watch::Receiver<Option<u64>>>,
}

/// Why an engine could not transcribe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SttError {
    #[error("speech-to-text engine failed: {0}")]
    Engine(String),
    #[error("speech-to-text engine is not available: {0}")]
    Unavailable(String),
}

impl SttError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SttError::Engine(_) => "engine",
            SttError::Unavailable(_) => "unavailable",
        }
    }
}

/// A boxed future, so engines can be held as `Arc<dyn SpeechToText>`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A speech-to-text engine, shared by every session.
pub trait SpeechToText: Send + Sync + 'static {
    /// Engine name for logs and `response.voxgate`.
    fn name(&self) -> &str;

    /// Transcribes one utterance. Reads `utterance.audio` until it closes, may send partial
    /// transcripts on `partials` (dropped when full: partials are advisory), and resolves to the final
    /// transcript. Dropping the future abandons the work.
    fn transcribe(&self, utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>>;

    /// Loads whatever the engine loads lazily, now. Most engines have nothing to load.
    fn warm_up(&self) -> BoxFuture<Result<(), SttError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Loads an engine.
pub type SttLoader = Box<dyn Fn() -> Result<std::sync::Arc<dyn SpeechToText>, SttError> + Send + Sync>;

/// An engine loaded on first use (or by [`LazyStt::warm_up`]) on a blocking thread, so a server that
/// never hears speech never pays for the model, and loading never stalls the async runtime.
pub struct LazyStt {
    name: String,
    loader: std::sync::Arc<SttLoader>,
    engine: std::sync::Arc<tokio::sync::OnceCell<Result<std::sync::Arc<dyn SpeechToText>, SttError>>>,
}

impl LazyStt {
    pub fn new(name: impl Into<String>, loader: SttLoader) -> LazyStt {
        LazyStt { name: name.into(), loader: std::sync::Arc::new(loader), engine: Default::default() }
    }
}

async fn load_stt(
    loader: &std::sync::Arc<SttLoader>,
    cell: &tokio::sync::OnceCell<Result<std::sync::Arc<dyn SpeechToText>, SttError>>,
) -> Result<std::sync::Arc<dyn SpeechToText>, SttError> {
    cell.get_or_init(|| {
        let loader = loader.clone();
        async move {
            tokio::task::spawn_blocking(move || loader())
                .await
                .unwrap_or_else(|e| Err(SttError::Unavailable(format!("loading the engine failed: {e}"))))
        }
    })
    .await
    .clone()
}

impl SpeechToText for LazyStt {
    fn name(&self) -> &str {
        &self.name
    }

    /// A failure is kept and reported by every later call.
    fn warm_up(&self) -> BoxFuture<Result<(), SttError>> {
        let (loader, cell) = (self.loader.clone(), self.engine.clone());
        Box::pin(async move { load_stt(&loader, &cell).await.map(|_| ()) })
    }

    fn transcribe(&self, utterance: Utterance, partials: mpsc::Sender<Transcript>) -> BoxFuture<Result<Transcript, SttError>> {
        let (loader, cell) = (self.loader.clone(), self.engine.clone());
        Box::pin(async move { load_stt(&loader, &cell).await?.transcribe(utterance, partials).await })
    }
}
