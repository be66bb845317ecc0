//! The per-call session: one actor task per connection owns the conversation, turn taking, barge-in
//! and outbound audio pacing ([`actor`]); each response runs the gateway, the chunker and TTS off the
//! actor ([`response`]). Sessions speak typed Realtime events; only `transport/` turns them into JSON.

mod actor;
pub mod conversation;
pub mod response;

use std::sync::Arc;

pub use actor::{run_session, Inbound, Outbound, SessionStart};

use crate::config::{Config, RealtimeSettings, SttConfig, TtsConfig};
use crate::llm::router::Gateway;
use crate::stt::fake::{FakeStt, ScriptedUtterance, Sidecar};
use crate::stt::SpeechToText;
use crate::tts::fake::{FakeTts, FakeTtsSettings};
use crate::tts::TextToSpeech;

/// The engines and limits every session shares.
pub struct VoiceEngines {
    pub gateway: Arc<Gateway>,
    pub stt: Option<Arc<dyn SpeechToText>>,
    pub tts: Option<Arc<dyn TextToSpeech>>,
    pub settings: RealtimeSettings,
}

impl VoiceEngines {
    /// Builds the configured engines; a scripted fake whose files cannot be read is an error here,
    /// at start-up, not in the first call.
    pub fn from_config(config: &Config, gateway: Arc<Gateway>) -> Result<VoiceEngines, String> {
        let stt: Option<Arc<dyn SpeechToText>> = match &config.stt {
            SttConfig::None => None,
            SttConfig::Fake { script, transcripts, latency_ms } => {
                let mut lines = Vec::new();
                for path in script {
                    lines.extend(Sidecar::load(path).map_err(|e| format!("stt.script: {e}"))?.utterances);
                }
                lines.extend(transcripts.iter().map(|t| ScriptedUtterance::from_text(t)));
                Some(Arc::new(FakeStt::new(lines, *latency_ms)))
            }
        };
        let tts: Option<Arc<dyn TextToSpeech>> = match &config.tts {
            TtsConfig::None => None,
            TtsConfig::Fake { ttfb_ms, ms_per_char } => {
                Some(Arc::new(FakeTts::new(FakeTtsSettings { ttfb_ms: *ttfb_ms, ms_per_char: *ms_per_char, ..FakeTtsSettings::default() })))
            }
        };
        Ok(VoiceEngines { gateway, stt, tts, settings: config.realtime.clone() })
    }
}
