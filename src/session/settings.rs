//! A session's settings as the session understands them: typed values, no wire names. A transport
//! reads its client's configuration into a [`SettingsUpdate`]; [`Settings::apply`] checks what only the
//! session can check (the model exists, audio output has a voice engine, a threshold is in range) and
//! applies the whole update or none of it.

use crate::audio::AudioFormat;
use crate::stt::vad::VadSettings;

use super::conversation::TranscriptRendering;
use super::event::{ErrorKind, SessionError, Setting};
use super::VoiceEngines;

/// The settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The gateway route or model that answers.
    pub model: String,
    pub instructions: Option<String>,
    /// Answers are spoken (`true`) or text only.
    pub audio_out: bool,
    /// How the client's audio is encoded; the transport decodes it, the session keeps it so a client
    /// can read it back and so a change of format starts the input pipeline afresh.
    pub input_format: AudioFormat,
    /// How the client wants audio; the session sends PCM at this format's rate.
    pub output_format: AudioFormat,
    /// Turn detection; `None` when the client commits turns by hand.
    pub turn: Option<Turn>,
    pub voice: Option<Voice>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `None`: the model's own limit.
    pub max_output_tokens: Option<u32>,
    /// What the client asked of input transcription (reported back; the cascade always transcribes).
    pub transcription: Option<Transcription>,
    /// How the user's spoken turns are written for the model.
    pub transcript_rendering: TranscriptRendering,
}

/// Voice activity detection and what a detected turn does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Turn {
    pub vad: VadSettings,
    /// Answer when a turn ends.
    pub create_response: bool,
    /// Barge-in: the caller's speech stops the answer in flight.
    pub interrupt_response: bool,
    /// The speech-to-text vendor's end of turn ends the caller's turn, not the session's detector.
    pub by_vendor: bool,
}

impl Default for Turn {
    fn default() -> Self {
        Turn { vad: VadSettings::default(), create_response: true, interrupt_response: true, by_vendor: false }
    }
}

/// A voice by name (`alloy`, one of the engine's) or by a vendor's voice id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Voice {
    Name(String),
    Id(String),
}

impl Voice {
    /// What the TTS engine is asked for.
    pub fn engine_name(&self) -> &str {
        match self {
            Voice::Name(n) | Voice::Id(n) => n,
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Option<serde_json::Value>,
}

impl Tool {
    /// Its name, description and parameter schema (as JSON), in bytes.
    pub fn size_bytes(&self) -> usize {
        self.name.len() + self.description.as_ref().map_or(0, String::len) + self.parameters.as_ref().map_or(0, |p| p.to_string().len())
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

/// Input transcription as the client asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcription {
    pub model: Option<String>,
    pub language: Option<String>,
    pub prompt: Option<String>,
}

/// A change of settings; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsUpdate {
    pub model: Option<String>,
    pub instructions: Option<String>,
    pub audio_out: Option<bool>,
    pub input_format: Option<AudioFormat>,
    /// `Some(None)`: no turn detection (manual commit).
    pub turn: Option<Option<TurnUpdate>>,
    /// `Some(None)`: the client turned transcription reports off; the last setting is kept.
    pub transcription: Option<Option<Transcription>>,
    pub output_format: Option<AudioFormat>,
    pub voice: Option<Voice>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    /// `Some(None)`: the model's own limit.
    pub max_output_tokens: Option<Option<u32>>,
    pub transcript_rendering: Option<TranscriptRendering>,
}

/// A change of voice activity detection; `None` keeps a value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnUpdate {
    /// 0.0 to 1.0.
    pub threshold: Option<f64>,
    pub prefix_padding_ms: Option<u32>,
    pub silence_duration_ms: Option<u32>,
    pub create_response: Option<bool>,
    pub interrupt_response: Option<bool>,
    /// `Some(true)`: the vendor ends turns; `Some(false)`: the session's detector does.
    pub by_vendor: Option<bool>,
}

/// Longest `instructions` a session or a response takes, in bytes.
pub const MAX_INSTRUCTIONS_BYTES: usize = 64 * 1024;
/// Most tools a session or a response declares (OpenAI's own limit per request).
pub const MAX_TOOLS: usize = 128;
/// Most bytes of tool definitions (their JSON) a session or a response declares.
pub const MAX_TOOLS_BYTES: usize = 64 * 1024;

/// Instructions and tool definitions from a client are copied into every model request: bounded.
pub fn check_prompt(instructions: Option<&str>, tools: Option<&[Tool]>) -> Result<(), SessionError> {
    if let Some(text) = instructions.filter(|t| t.len() > MAX_INSTRUCTIONS_BYTES) {
        let message = format!("instructions of {} bytes are over the limit of {MAX_INSTRUCTIONS_BYTES} bytes", text.len());
        return Err(SessionError::new(ErrorKind::InvalidValue, message));
    }
    if let Some(tools) = tools {
        if tools.len() > MAX_TOOLS {
            let message = format!("{} tools are over the limit of {MAX_TOOLS}", tools.len());
            return Err(SessionError::new(ErrorKind::InvalidValue, message));
        }
        let bytes: usize = tools.iter().map(Tool::size_bytes).sum();
        if bytes > MAX_TOOLS_BYTES {
            let message = format!("tool definitions of {bytes} bytes are over the limit of {MAX_TOOLS_BYTES} bytes");
            return Err(SessionError::new(ErrorKind::InvalidValue, message));
        }
    }
    Ok(())
}

impl Settings {
    /// A new session's settings: 24 kHz PCM both ways, turn detection on, spoken answers when a
    /// voice engine is there.
    pub fn initial(route: &str, engines: &VoiceEngines) -> Settings {
        Settings {
            model: route.to_string(),
            instructions: None,
            audio_out: engines.tts.is_some(),
            input_format: AudioFormat::REALTIME_PCM,
            output_format: AudioFormat::REALTIME_PCM,
            turn: Some(Turn::default()),
            voice: None,
            tools: Vec::new(),
            tool_choice: None,
            max_output_tokens: None,
            transcription: engines.stt.as_ref().map(|s| Transcription { model: Some(s.name().to_string()), ..Transcription::default() }),
            transcript_rendering: TranscriptRendering::default(),
        }
    }

    /// The settings after `update`, or why it is refused (nothing changes then).
    pub fn apply(&self, update: SettingsUpdate, engines: &VoiceEngines) -> Result<Settings, SessionError> {
        let mut next = self.clone();
        let refuse = |kind, message: String, setting| Err(SessionError::new(kind, message).concerning(setting));
        if let Some(model) = update.model {
            if !engines.gateway.routes().contains_key(&model) && !engines.gateway.models().contains_key(&model) {
                return refuse(ErrorKind::InvalidValue, format!("model {model:?} is not a route or model of this server"), Setting::Model);
            }
            next.model = model;
        }
        check_prompt(update.instructions.as_deref(), update.tools.as_deref())?;
        if let Some(instructions) = update.instructions {
            next.instructions = Some(instructions);
        }
        if let Some(audio_out) = update.audio_out {
            if audio_out && engines.tts.is_none() {
                return refuse(
                    ErrorKind::TtsUnavailable,
                    "audio output needs a text-to-speech engine and none is configured ([tts] engine in voxgate.toml); use output_modalities [\"text\"]".into(),
                    Setting::OutputModalities,
                );
            }
            next.audio_out = audio_out;
        }
        if let Some(format) = update.input_format {
            next.input_format = format;
        }
        match update.turn {
            None => {}
            Some(None) => next.turn = None,
            Some(Some(t)) => {
                let base = next.turn.unwrap_or_default();
                let mut vad = base.vad;
                if let Some(threshold) = t.threshold {
                    if !(0.0..=1.0).contains(&threshold) {
                        return refuse(
                            ErrorKind::InvalidValue,
                            format!("threshold {threshold} is outside 0.0 to 1.0"),
                            Setting::TurnThreshold,
                        );
                    }
                    vad.threshold = threshold as f32;
                }
                if let Some(ms) = t.prefix_padding_ms {
                    vad.prefix_padding_ms = ms.min(5_000);
                }
                if let Some(ms) = t.silence_duration_ms {
                    vad.silence_duration_ms = ms.clamp(10, 10_000);
                }
                let by_vendor = t.by_vendor.unwrap_or(base.by_vendor);
                if by_vendor && !engines.stt.as_ref().is_some_and(|s| s.ends_turns()) {
                    return refuse(
                        ErrorKind::InvalidValue,
                        "turn detection by the vendor needs speech-to-text engines that end turns (Deepgram, AssemblyAI: every engine of [stt] engines); use server_vad".into(),
                        Setting::TurnType,
                    );
                }
                next.turn = Some(Turn {
                    vad,
                    create_response: t.create_response.unwrap_or(base.create_response),
                    interrupt_response: t.interrupt_response.unwrap_or(base.interrupt_response),
                    by_vendor,
                });
            }
        }
        if let Some(t) = update.transcription {
            // The cascade always transcribes; the client's choice only changes what is reported.
            next.transcription = t.or(next.transcription);
        }
        if let Some(format) = update.output_format {
            next.output_format = format;
        }
        if let Some(voice) = update.voice {
            next.voice = Some(voice);
        }
        if let Some(tools) = update.tools {
            next.tools = tools;
        }
        if let Some(choice) = update.tool_choice {
            next.tool_choice = Some(choice);
        }
        if let Some(max) = update.max_output_tokens {
            next.max_output_tokens = max;
        }
        if let Some(rendering) = update.transcript_rendering {
            next.transcript_rendering = rendering;
        }
        Ok(next)
    }

    /// Whether the input pipeline (resampler, VAD) must start afresh after a change to `next`.
    pub fn input_changed(&self, next: &Settings) -> bool {
        let detector = |s: &Settings| s.turn.map(|t| (t.vad, t.by_vendor));
        next.input_format != self.input_format || detector(next) != detector(self)
    }
}
