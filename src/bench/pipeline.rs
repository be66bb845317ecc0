//! `voxgate bench pipeline`: what the voice pipeline itself adds to a turn, under load, with fake
//! engines of known latency.
//!
//! voxgate runs as a child process (so its CPU and memory are its own) with the fake provider, the
//! scripted fake STT and the fake TTS. N clients in this process talk to it over real WebSockets on
//! loopback as a phone line would: an utterance (the `table_booking` fixture, or the mono WAVs given
//! with `--wav`, one after another), then silence, in 20 ms `audio/pcm` appends paced at real time,
//! never stopping; after each answer has played, the next utterance. Each turn's overhead is the
//! time from the end of user speech to the first agent audio minus the silence window and the
//! configured engine times, measured twice: on the server's clock
//! (`response.voxgate.latency_ms.voice_to_voice`) and on the client's. Everything shares the same
//! cores, so the figures include contention with the load generator: an upper bound.
//!
//! First audio as a microphone client sees it is measured apart from the server: from sending the
//! frame that carries the utterance's last voiced sample, found in the audio itself by
//! [`last_voiced_sample`], to receiving the first answer audio. It includes the silence window and
//! whatever quiet tail of the speech the server's VAD does not count as voiced; with `--embedded` it
//! is the report's first row.
//!
//! `--transport twilio` runs the same load over Twilio Media Streams (`/v1/phone/twilio`): the same
//! utterances as μ-law 8 kHz in 20 ms `media` frames, each `mark` echoed once the audio before it
//! has played, as a carrier does. Twilio reports no turns, so only the client's clock measures them:
//! the frame that completes the silence window is found by running the server's input path (μ-law,
//! 8 → 16 kHz, the energy VAD) over each utterance here, and an answer is over once its audio has
//! played and nothing more came for [`ANSWER_END_GRACE`].

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::{cpu_seconds, peak_rss_mb, wait_ready};
use crate::audio::{ulaw_decode, ulaw_encode, Resampler, G711_RATE_HZ};
use crate::stt::vad::{EnergyVad, VadEvent, VadSettings};
use crate::stt::STT_RATE_HZ;

/// The utterance every client speaks without `--wav` (its sidecar scripts the fake STT).
const FIXTURE: &str = "fixtures/audio/table_booking";
/// [`last_voiced_sample`]'s rule: the audio's level in windows this long...
const VOICED_WINDOW_MS: u64 = 10;
/// ...is voiced within this many dB of the loudest window...
const VOICED_BELOW_PEAK_DB: f64 = 40.0;
/// ...and at least this many dB above the noise floor...
const VOICED_ABOVE_FLOOR_DB: f64 = 12.0;
/// ...taken as this quantile of the windows' levels (the quiet before, between and after words).
const NOISE_FLOOR_QUANTILE: f64 = 0.1;
/// Fake engine times, as configured in the child's `voxgate.toml`.
const STT_LATENCY_MS: u64 = 150;
const LLM_TTFT_MS: u64 = 200;
const TTS_TTFB_MS: u64 = 80;
/// The Realtime API's `audio/pcm`: 24 kHz mono PCM16, sent in 20 ms appends.
const RATE_HZ: u32 = 24_000;
const FRAME_MS: u64 = 20;
const FRAME_SAMPLES: usize = (RATE_HZ as u64 * FRAME_MS / 1000) as usize;
/// Send times kept per session to find the frame that completed a silence window (20 s of frames).
const SENT_FRAMES_KEPT: usize = 1000;
/// A session that has heard no answer audio this long after its utterance ended speaks again (counted).
const TURN_TIMEOUT: Duration = Duration::from_secs(15);
/// How `--embedded` sessions set themselves up, as a voice app would: instructions that ask for a
/// short spoken answer, and a cap on its length (SmolLM2 otherwise talks for a minute).
const EMBEDDED_SESSION: &str = r#"{"type":"session.update","session":{"type":"realtime","instructions":"You take restaurant bookings on the phone. Answer in one short sentence.","max_output_tokens":48}}"#;
/// The warm-up session of `--embedded` runs: long enough for one whole turn.
const EMBEDDED_WARM_UP: Duration = Duration::from_secs(30);
/// Sessions connecting at once in the idle measurement.
const IDLE_CONNECTS_AT_ONCE: usize = 64;
/// Twilio says nothing when an answer ends: a call takes it as over once its audio has played and
/// nothing more came for this long (voxgate sends audio about 100 ms ahead of its playing), then
/// speaks again. Audio that comes later is counted late.
const ANSWER_END_GRACE: Duration = Duration::from_millis(200);

/// How the sessions reach voxgate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// `/v1/realtime`: OpenAI Realtime events, 24 kHz PCM16 in base64.
    #[default]
    Realtime,
    /// `/v1/phone/twilio`: Twilio Media Streams, μ-law 8 kHz in base64, marks echoed.
    Twilio,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "realtime" => Ok(Transport::Realtime),
            "twilio" => Ok(Transport::Twilio),
            other => Err(format!("unknown transport {other:?}: realtime or twilio")),
        }
    }
}

impl Transport {
    /// The input audio's rate.
    fn rate_hz(self) -> u32 {
        match self {
            Transport::Realtime => RATE_HZ,
            Transport::Twilio => G711_RATE_HZ,
        }
    }

    /// What the server's answer audio arrives in.
    fn output_unit(self) -> &'static str {
        match self {
            Transport::Realtime => "deltas",
            Transport::Twilio => "media frames",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Sessions streaming audio (0: skip the load run).
    pub sessions: usize,
    /// Seconds with every session running, after the staggered starts.
    pub seconds: u64,
    /// Sessions connected and idle for the memory measurement (0: skip).
    pub idle: usize,
    /// The fake engines wait with [`crate::fake_clock`]'s precise timer thread, so the engine time
    /// subtracted from a turn is the time the engines really took; with tokio's 1 ms timer each
    /// engine's wait runs up to 1 ms long and that rounding lands in the overhead.
    pub precise_engine_timers: bool,
    /// Run the child on its embedded engines (Whisper, SmolLM2, Piper: the offline defaults)
    /// instead of the fakes: the figures are then whole turn latencies, engines included.
    pub embedded: bool,
    pub transport: Transport,
    /// Mono WAVs every session speaks, one after another (empty: the `table_booking` fixture).
    pub wavs: Vec<PathBuf>,
    /// Hear through the Deepgram adapter, one WebSocket per call to a fake vendor in this process
    /// with the fake STT's latency, instead of the in-process fake STT.
    pub stt_vendor: bool,
    /// Speak through a hosted TTS adapter to a fake vendor in this process with the fake TTS's time
    /// to first audio: OpenAI's (a request per chunk) or ElevenLabs' (a WebSocket per answer).
    pub tts_vendor: Option<super::vendor::TtsVendor>,
}

/// Engine times the fakes are configured with: what a turn spends outside the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineTimes {
    /// `server_vad`'s `silence_duration_ms`: the quiet that ends a turn.
    pub silence_ms: f64,
    pub stt_ms: f64,
    pub llm_ttft_ms: f64,
    pub tts_ttfb_ms: f64,
}

impl EngineTimes {
    fn bench() -> EngineTimes {
        EngineTimes {
            silence_ms: VadSettings::default().silence_duration_ms as f64,
            stt_ms: STT_LATENCY_MS as f64,
            llm_ttft_ms: LLM_TTFT_MS as f64,
            tts_ttfb_ms: TTS_TTFB_MS as f64,
        }
    }

    fn engines_ms(&self) -> f64 {
        self.stt_ms + self.llm_ttft_ms + self.tts_ttfb_ms
    }

    /// Overhead from the server's `voice_to_voice`, which starts at the real end of speech and so
    /// includes the silence window.
    pub fn server_overhead_ms(&self, voice_to_voice_ms: f64) -> f64 {
        voice_to_voice_ms - self.silence_ms - self.engines_ms()
    }

    /// Overhead from the client's clock, which starts when the frame completing the silence window
    /// was sent: the window is already behind it.
    pub fn client_overhead_ms(&self, window_sent_to_first_audio_ms: f64) -> f64 {
        window_sent_to_first_audio_ms - self.engines_ms()
    }
}

/// The `q` quantile (0–1) of sorted values, nearest rank; NaN when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The client frame (numbered from 0 since the session began) whose arrival lets the server see
/// `window_end_ms` of input: the server resamples to 16 kHz and its resampler holds back
/// `holdback_16k` output samples until more input comes, so a window ending on a frame boundary
/// completes only with the next frame.
pub fn completing_frame(window_end_ms: u64, holdback_16k: u64) -> u64 {
    let frame_16k = u64::from(STT_RATE_HZ) * FRAME_MS / 1000;
    let needed = window_end_ms * u64::from(STT_RATE_HZ) / 1000 + holdback_16k;
    needed.div_ceil(frame_16k).saturating_sub(1)
}

/// The base64 audio of a `response.output_audio.delta` event, found without parsing the JSON:
/// the event's type comes first and `delta` is a base64 string (no escapes) in it. `None` for any
/// other event, or a delta not written that way, which then goes through the JSON parser.
pub fn audio_delta(text: &str) -> Option<&str> {
    base64_field(text, r#"{"type":"response.output_audio.delta","#, r#""delta":""#)
}

/// The base64 μ-law of a Twilio `media` frame, found as [`audio_delta`] finds a delta's audio:
/// voxgate writes `event` first and the only string called `payload` is the audio.
pub fn twilio_media(text: &str) -> Option<&str> {
    base64_field(text, r#"{"event":"media","#, r#""payload":""#)
}

/// The base64 string that follows `key` in a message that starts with `start`.
fn base64_field<'a>(text: &'a str, start: &str, key: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(start)?;
    let at = rest.find(key)? + key.len();
    let len = rest[at..].find('"')?;
    let audio = &rest[at..at + len];
    audio.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')).then_some(audio)
}

/// Bytes in a base64 string.
fn base64_bytes(b64: &str) -> usize {
    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(padding)
}

/// Milliseconds of 24 kHz PCM16 in a base64 string.
pub fn base64_pcm16_ms(b64: &str) -> f64 {
    (base64_bytes(b64) / 2) as f64 * 1000.0 / f64::from(RATE_HZ)
}

/// Milliseconds of 8 kHz μ-law in a base64 string.
pub fn base64_ulaw_ms(b64: &str) -> f64 {
    base64_bytes(b64) as f64 * 1000.0 / f64::from(G711_RATE_HZ)
}

/// The sum of every series of a Prometheus counter in `/metrics` text.
pub fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Busy and total CPU time of the whole machine from `/proc/stat`'s `cpu` line, in clock ticks:
/// busy is user + nice + system + irq + softirq + steal, total adds idle and iowait.
pub fn machine_cpu_ticks(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some((busy, busy + field(3) + field(4)))
}

fn machine_cpu() -> Option<(u64, u64)> {
    machine_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// How a client that starts playing at the first delta, with no jitter buffer of its own, hears a
/// response: each delta's audio plays right after the audio before it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Playout {
    started_ms: Option<f64>,
    audio_ms: f64,
}

impl Playout {
    /// A delta of `audio_ms` arrived at `arrived_ms`; returns its lead: how long before its audio
    /// must start playing it arrived (negative: the caller heard a gap).
    pub fn on_delta(&mut self, arrived_ms: f64, audio_ms: f64) -> f64 {
        let started = *self.started_ms.get_or_insert(arrived_ms);
        let lead = started + self.audio_ms - arrived_ms;
        self.audio_ms += audio_ms;
        lead
    }

    /// When the audio received so far will have played (`None` before the first delta).
    pub fn end_ms(&self) -> Option<f64> {
        self.started_ms.map(|started| started + self.audio_ms)
    }
}

/// 16 kHz samples the server's 24 → 16 kHz resampler holds back in steady state: the output a
/// second of 20 ms frames falls short of its exact length.
fn resampler_holdback_16k() -> u64 {
    let Ok(mut r) = Resampler::new(RATE_HZ, STT_RATE_HZ) else { return 0 };
    let frames = 50;
    let mut out = Vec::new();
    for _ in 0..frames {
        r.process(&[0; FRAME_SAMPLES], &mut out);
    }
    (frames * FRAME_SAMPLES * STT_RATE_HZ as usize / RATE_HZ as usize).saturating_sub(out.len()) as u64
}

/// The utterances as ready-to-send input frames, and one frame of silence: whole
/// `input_audio_buffer.append` events for Realtime; for Twilio the base64 μ-law payloads, which each
/// call puts in its own numbered `media` frames.
pub(super) struct Frames {
    pub(super) utterances: Vec<Utterance>,
    pub(super) silence: Utf8Bytes,
}

/// One WAV, as the frames that carry it.
pub(super) struct Utterance {
    /// The file's name, for the report.
    name: String,
    pub(super) speech: Vec<Utf8Bytes>,
    /// Twilio: the frame, counted from the utterance's first, that completes the server's silence window.
    window_frame: Option<u64>,
    /// The frame, counted from the utterance's first, that carries its last voiced sample ([`last_voiced_sample`]).
    last_voiced_frame: usize,
    /// Where that sample is, and the utterance's length, in ms.
    last_voiced_ms: f64,
    pub(super) duration_ms: f64,
}

fn append_event(samples: &[i16]) -> Utf8Bytes {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let audio = base64::engine::general_purpose::STANDARD.encode(bytes);
    Utf8Bytes::from(format!(r#"{{"type":"input_audio_buffer.append","audio":"{audio}"}}"#))
}

fn ulaw_payload(samples: &[i16]) -> Utf8Bytes {
    let bytes: Vec<u8> = samples.iter().map(|&s| ulaw_encode(s)).collect();
    Utf8Bytes::from(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The index of the last voiced sample of an utterance, from the audio alone (so any WAV works, with
/// or without a sidecar): its level is taken over [`VOICED_WINDOW_MS`] windows from its start; a
/// window is voiced when its mean power is within [`VOICED_BELOW_PEAK_DB`] of the loudest window's
/// and at least [`VOICED_ABOVE_FLOOR_DB`] above the noise floor, the [`NOISE_FLOOR_QUANTILE`]
/// quantile of the windows' powers; the last voiced sample is the last of the last voiced window.
/// On the fixtures this lands within 10 ms of the sidecars' last word end (where the word's audio
/// falls below about -50 dBFS), the noisy one included, where the floor rule keeps the noise out.
/// A recording with almost no quiet in it (less than a tenth) would have its floor at speech level.
/// `None`: digital silence.
pub fn last_voiced_sample(pcm: &[i16], rate_hz: u32) -> Option<usize> {
    let window = ((u64::from(rate_hz) * VOICED_WINDOW_MS / 1000) as usize).max(1);
    let powers: Vec<f64> =
        pcm.chunks(window).map(|w| w.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / w.len() as f64).collect();
    let mut sorted = powers.clone();
    sorted.sort_by(f64::total_cmp);
    let peak = sorted.last().copied().filter(|&p| p > 0.0)?;
    let floor = percentile(&sorted, NOISE_FLOOR_QUANTILE);
    let db = |d: f64| 10f64.powf(d / 10.0);
    let voiced_min = (peak / db(VOICED_BELOW_PEAK_DB)).max(floor * db(VOICED_ABOVE_FLOOR_DB));
    let last = powers.iter().rposition(|&p| p >= voiced_min)?;
    Some(((last + 1) * window).min(pcm.len()) - 1)
}

pub(super) fn load_frames(wavs: &[PathBuf], transport: Transport) -> anyhow::Result<Frames> {
    let frame_samples = (u64::from(transport.rate_hz()) * FRAME_MS / 1000) as usize;
    let encode: fn(&[i16]) -> Utf8Bytes = match transport {
        Transport::Realtime => append_event,
        Transport::Twilio => ulaw_payload,
    };
    let utterances = wavs.iter().map(|wav| load_utterance(wav, transport, encode)).collect::<anyhow::Result<_>>()?;
    Ok(Frames { utterances, silence: encode(&vec![0; frame_samples]) })
}

fn load_utterance(wav: &Path, transport: Transport, encode: fn(&[i16]) -> Utf8Bytes) -> anyhow::Result<Utterance> {
    let fail = |why: String| anyhow::anyhow!("{}: {why}", wav.display());
    let mut reader = hound::WavReader::open(wav).map_err(|e| fail(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        return Err(fail(format!("{} channels of {}-bit audio: the bench speaks mono 16-bit PCM", spec.channels, spec.bits_per_sample)));
    }
    let samples: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().map_err(|e| fail(e.to_string()))?;
    let rate_hz = transport.rate_hz();
    let mut pcm = Vec::new();
    let mut r = Resampler::new(spec.sample_rate, rate_hz)?;
    r.process(&samples, &mut pcm);
    r.flush(&mut pcm);
    let frame_samples = (u64::from(rate_hz) * FRAME_MS / 1000) as usize;
    pcm.resize(pcm.len().div_ceil(frame_samples) * frame_samples, 0);
    let last_voiced = last_voiced_sample(&pcm, rate_hz).ok_or_else(|| fail("no voiced sample in it".into()))?;
    let window_frame = match transport {
        Transport::Realtime => None,
        Transport::Twilio => Some(window_completing_frame(&pcm).ok_or_else(|| fail("no turn ends in it".into()))?),
    };
    let ms = |samples: usize| samples as f64 * 1000.0 / f64::from(rate_hz);
    Ok(Utterance {
        name: wav.file_name().map_or_else(|| wav.display().to_string(), |n| n.to_string_lossy().into_owned()),
        speech: pcm.chunks(frame_samples).map(encode).collect(),
        window_frame,
        last_voiced_frame: last_voiced / frame_samples,
        last_voiced_ms: ms(last_voiced + 1),
        duration_ms: samples.len() as f64 * 1000.0 / f64::from(spec.sample_rate),
    })
}

/// The 20 ms frame of an utterance of 8 kHz audio sent as μ-law, counted from its first, on whose
/// arrival the server's VAD ends the turn: the server's input path (μ-law decoded, resampled to
/// 16 kHz, the energy VAD with the default settings) run here over the utterance and the silence
/// after it. Every turn gives the same frame, as each starts on a frame boundary after silence and
/// 8 → 16 kHz resampling is in the same phase at every frame boundary. `None`: no turn ends.
fn window_completing_frame(pcm_8k: &[i16]) -> Option<u64> {
    let frame = (u64::from(G711_RATE_HZ) * FRAME_MS / 1000) as usize;
    let heard: Vec<i16> = pcm_8k.iter().map(|&s| ulaw_decode(ulaw_encode(s))).collect();
    let silence = vec![0; frame];
    let window_frames = u64::from(VadSettings::default().silence_duration_ms).div_ceil(FRAME_MS) as usize + 2;
    let mut resampler = Resampler::new(G711_RATE_HZ, STT_RATE_HZ).ok()?;
    let mut vad = EnergyVad::new(VadSettings::default(), STT_RATE_HZ);
    let (mut pcm_16k, mut events) = (Vec::new(), Vec::new());
    for (i, samples) in heard.chunks(frame).chain(std::iter::repeat_n(&silence[..], window_frames)).enumerate() {
        pcm_16k.clear();
        resampler.process(samples, &mut pcm_16k);
        vad.push(&pcm_16k, &mut events);
        if events.iter().any(|(_, e)| matches!(e, VadEvent::SpeechStopped { .. })) {
            return Some(i as u64);
        }
    }
    None
}

/// `fixtures/audio/` from the working directory, else from the source tree this binary was built from.
pub(super) fn fixture_path(ext: &str) -> PathBuf {
    let relative = PathBuf::from(format!("{FIXTURE}.{ext}"));
    if relative.exists() {
        return std::fs::canonicalize(&relative).unwrap_or(relative);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A row of the latency table: its name and what it takes from a turn.
type Row<'a> = (&'a str, &'a dyn Fn(&Turn) -> Option<f64>);

/// One turn's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Turn {
    /// Which of [`Frames::utterances`] was spoken.
    utterance: usize,
    /// The server's figure (Realtime only).
    voice_to_voice_ms: Option<f64>,
    /// From sending the frame that completed the silence window to receiving the first audio.
    client_ms: Option<f64>,
    /// From sending the frame that carries the utterance's last voiced sample to receiving the first
    /// audio: first audio as a microphone client sees it.
    mic_ms: Option<f64>,
    stt_ms: Option<f64>,
    llm_ttft_ms: Option<f64>,
    tts_ttfb_ms: Option<f64>,
}

/// What one session saw.
#[derive(Debug, Default)]
struct SessionReport {
    connected: bool,
    active: Duration,
    turns: Vec<Turn>,
    frames_sent: u64,
    deltas: u64,
    /// Deltas that arrived after their audio should have started playing.
    underruns: u64,
    /// The smallest lead of any delta but a response's first.
    min_lead_ms: Option<f64>,
    /// Pacing ticks that fired a whole frame or more late (the load generator falling behind).
    late_ticks: u64,
    max_tick_lateness_ms: f64,
    /// `speech_stopped` events whose completing frame was not found among the recent sends.
    unmatched_stops: u64,
    responses_not_completed: u64,
    /// Twilio: `clear`s received.
    clears: u64,
    timeouts: u64,
    errors: Vec<String>,
    closed_by_server: bool,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    audio_end_ms: Option<u64>,
    #[serde(default)]
    response: Option<ResponseInfo>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ResponseInfo {
    status: String,
    #[serde(default)]
    voxgate: Option<crate::transport::realtime::VoxgateResponseInfo>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the clients reach voxgate.
pub(super) struct Dial {
    pub(super) transport: Transport,
    pub(super) url: String,
    /// The route a Twilio call asks for in its `start` frame (a Realtime session's is in the URL).
    pub(super) route: &'static str,
    /// Realtime: the event a session sends first (`--embedded`).
    pub(super) setup: Option<&'static str>,
}

/// Connects client `index` and opens its session: a Realtime session once `session.created` has
/// come; a Twilio call once `connected` and `start` have gone (Twilio's protocol answers neither).
pub(super) async fn connect(dial: &Dial, index: usize) -> anyhow::Result<(Ws, Line)> {
    // The same small read buffer as the server's: the load generator shares its cores.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(crate::transport::WS_READ_BUFFER_BYTES);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&dial.url, Some(config), true).await?;
    if dial.transport == Transport::Twilio {
        let call = Call::new(index);
        ws.send(Message::Text(Utf8Bytes::from_static(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#))).await?;
        ws.send(Message::Text(call.start(dial.route))).await?;
        return Ok((ws, Line::Twilio(call)));
    }
    // Wait for `session.created`.
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            if serde_json::from_str::<Event>(&text).is_ok_and(|e| e.kind == "session.created") {
                return Ok((ws, Line::Realtime));
            }
        }
    }
    anyhow::bail!("the server closed the session before session.created")
}

/// What a client's transport adds to the shared loop: nothing for Realtime; a Twilio call numbers
/// its messages and owes mark echoes.
pub(super) enum Line {
    Realtime,
    Twilio(Call),
}

/// A Twilio call's own state.
pub(super) struct Call {
    stream_sid: String,
    /// The last `sequenceNumber` sent: Twilio numbers every message of a stream, `start` being 1.
    sequence: u64,
    /// Media frames sent (Twilio's `chunk`).
    chunks: u64,
    /// Marks received, each with when the audio before it will have played; echoed then, in order.
    marks: VecDeque<(Instant, String)>,
    /// `clear`s received: voxgate took the caller for barging in.
    clears: u64,
}

impl Call {
    fn new(index: usize) -> Call {
        Call { stream_sid: format!("MZ{index:032x}"), sequence: 1, chunks: 0, marks: VecDeque::new(), clears: 0 }
    }

    fn start(&self, route: &str) -> Utf8Bytes {
        let sid = &self.stream_sid;
        let start = serde_json::json!({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
            "accountSid": "ACbench", "streamSid": sid, "callSid": format!("CA{}", &sid[2..]), "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": G711_RATE_HZ, "channels": 1},
            "customParameters": {"model": route}}});
        Utf8Bytes::from(start.to_string())
    }

    /// A `media` frame around a base64 μ-law payload, numbered and timed as Twilio's are.
    fn media(&mut self, payload: &str) -> Utf8Bytes {
        self.sequence += 1;
        self.chunks += 1;
        Utf8Bytes::from(format!(
            r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{payload}"}},"streamSid":"{}"}}"#,
            self.sequence,
            self.chunks,
            (self.chunks - 1) * FRAME_MS,
            self.stream_sid
        ))
    }

    /// The echo of the first mark owed, if its audio has played by `now`.
    fn echo_due(&mut self, now: Instant) -> Option<Utf8Bytes> {
        if self.marks.front().is_none_or(|(due, _)| *due > now) {
            return None;
        }
        let (_, name) = self.marks.pop_front()?;
        self.sequence += 1;
        let echo = serde_json::json!({"event": "mark", "sequenceNumber": self.sequence.to_string(), "streamSid": self.stream_sid,
            "mark": {"name": name}});
        Some(Utf8Bytes::from(echo.to_string()))
    }
}

impl Line {
    /// The message that carries input frame `frame` (see [`Frames`]).
    pub(super) fn input(&mut self, frame: &Utf8Bytes) -> Utf8Bytes {
        match self {
            Line::Realtime => frame.clone(),
            Line::Twilio(call) => call.media(frame),
        }
    }

    fn read<'a>(&self, text: &'a str) -> Heard<'a> {
        match self {
            // Most events are audio deltas: measured without a JSON parse of their audio.
            Line::Realtime => match audio_delta(text) {
                Some(delta) => Heard::Audio(base64_pcm16_ms(delta)),
                None => serde_json::from_str::<Event>(text).map_or(Heard::Unreadable("an event that is not JSON"), Heard::Realtime),
            },
            Line::Twilio(_) => {
                if let Some(payload) = twilio_media(text) {
                    return Heard::Audio(base64_ulaw_ms(payload));
                }
                let Ok(frame) = serde_json::from_str::<TwilioOut>(text) else { return Heard::Unreadable("a frame that is not JSON") };
                match (&*frame.event, frame.mark) {
                    ("mark", Some(mark)) => Heard::Mark(mark.name),
                    ("clear", _) => Heard::Clear,
                    ("media", _) => Heard::Unreadable("a media frame whose audio could not be found"),
                    _ => Heard::Other,
                }
            }
        }
    }
}

/// A message from voxgate, as the client loop takes it.
enum Heard<'a> {
    /// Answer audio, in ms: a Realtime delta or a Twilio `media` frame.
    Audio(f64),
    /// Any other Realtime event.
    Realtime(Event<'a>),
    /// A Twilio mark: echoed once the audio sent before it has played.
    Mark(String),
    /// Twilio's `clear`: the carrier drops its queued audio and echoes every mark still owed.
    Clear,
    Unreadable(&'static str),
    Other,
}

/// A frame voxgate sends a Twilio call, other than `media`.
#[derive(Deserialize)]
struct TwilioOut<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default)]
    mark: Option<MarkName>,
}

#[derive(Deserialize)]
struct MarkName {
    name: String,
}

/// Per-session state of the turn being measured.
#[derive(Default)]
struct TurnState {
    /// Which of [`Frames::utterances`] is spoken.
    utterance: usize,
    /// Twilio: the number of the frame that will complete the silence window.
    window_frame: Option<u64>,
    window_sent: Option<Instant>,
    /// When the frame that carries the utterance's last voiced sample was sent.
    last_voiced_sent: Option<Instant>,
    first_audio: Option<Instant>,
    playout: Playout,
}

impl TurnState {
    /// From sending the frame that completed the silence window to receiving the first audio.
    fn client_ms(&self) -> Option<f64> {
        self.window_sent.zip(self.first_audio).map(|(s, f)| f.duration_since(s).as_secs_f64() * 1000.0)
    }

    /// From sending the frame that carries the last voiced sample to receiving the first audio;
    /// `None` when audio came first (an answer to part of the utterance).
    fn mic_ms(&self) -> Option<f64> {
        let (sent, first) = self.last_voiced_sent.zip(self.first_audio)?;
        first.checked_duration_since(sent).map(|d| d.as_secs_f64() * 1000.0)
    }

    /// The figures the client measured, for a turn to be recorded.
    fn turn(&self) -> Turn {
        Turn { utterance: self.utterance, client_ms: self.client_ms(), mic_ms: self.mic_ms(), ..Turn::default() }
    }
}

/// Where in the 20 ms frame period client `i`'s frames go out: spread over the period by the
/// golden-ratio sequence, as independent callers' clocks would be. (Starting sessions 20 ms apart
/// would otherwise put every client on one phase: all their frames at once, every 20 ms.)
fn frame_phase(i: usize) -> Duration {
    let golden = (5f64.sqrt() - 1.0) / 2.0;
    Duration::from_millis(FRAME_MS).mul_f64((i as f64 * golden).fract())
}

/// The first instant at or after `now` that lies `phase` into a frame period counted from `epoch`.
fn next_on_phase(epoch: Instant, now: Instant, phase: Duration) -> Instant {
    let period = Duration::from_millis(FRAME_MS).as_nanos();
    let into = now.duration_since(epoch).as_nanos() % period;
    let wait = (phase.as_nanos() + period - into) % period;
    now + Duration::from_nanos(wait as u64)
}

/// One client, number `index`: connect at `start`, stream until `end`, measuring every turn.
async fn run_client(
    dial: Arc<Dial>,
    frames: Arc<Frames>,
    holdback_16k: u64,
    epoch: Instant,
    start: Instant,
    index: usize,
    end: Instant,
) -> SessionReport {
    let mut report = SessionReport::default();
    sleep_until(start).await;
    let (mut ws, mut line) = match connect(&dial, index).await {
        Ok(connected) => connected,
        Err(e) => {
            report.errors.push(format!("connect: {e}"));
            return report;
        }
    };
    report.connected = true;
    if let Some(setup) = dial.setup {
        if ws.send(Message::Text(Utf8Bytes::from_static(setup))).await.is_err() {
            report.closed_by_server = true;
            return report;
        }
    }
    let began = Instant::now();
    let engines = EngineTimes::bench();
    let silence_ms = engines.silence_ms as u64;
    let mut ticker = tokio::time::interval_at(next_on_phase(epoch, Instant::now(), frame_phase(index)), Duration::from_millis(FRAME_MS));
    // A late client sends the frames it owes at once, as a phone line's buffered audio would: the
    // audio clock stays on the wall clock and the offered load does not shrink when the host is busy.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut next_frame: u64 = 0;
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(SENT_FRAMES_KEPT);
    // The frame of the utterance to send next, and how many utterances have begun (the next is
    // `frames.utterances[begun % len]`).
    let mut speaking: Option<usize> = Some(0);
    let mut begun: usize = 0;
    let mut utterance_ended: Option<Instant> = None;
    let mut turn = TurnState::default();
    let ms_since = |t: Instant| t.duration_since(epoch).as_secs_f64() * 1000.0;
    // One timer for the end, not a new one per pass of the loop (the generator shares the cores).
    let ended = sleep_until(end);
    tokio::pin!(ended);
    // Twilio: one timer for the next mark echo, moved as marks come and go.
    let echo_at = sleep_until(end);
    tokio::pin!(echo_at);

    'session: loop {
        tokio::select! {
            biased;
            _ = &mut ended => break,
            _ = &mut echo_at, if matches!(&line, Line::Twilio(call) if !call.marks.is_empty()) => {
                let Line::Twilio(call) = &mut line else { continue };
                let now = Instant::now();
                while let Some(echo) = call.echo_due(now) {
                    if ws.send(Message::Text(echo)).await.is_err() {
                        report.closed_by_server = true;
                        break 'session;
                    }
                }
                if let Some((due, _)) = call.marks.front() {
                    echo_at.as_mut().reset(*due);
                }
            }
            due = ticker.tick() => {
                let now = Instant::now();
                let late_ms = now.duration_since(due).as_secs_f64() * 1000.0;
                report.max_tick_lateness_ms = report.max_tick_lateness_ms.max(late_ms);
                if late_ms >= FRAME_MS as f64 {
                    report.late_ticks += 1;
                }
                if let Line::Twilio(call) = &line {
                    // Twilio says nothing when an answer ends: it is over once played and followed by nothing.
                    let grace_ms = ANSWER_END_GRACE.as_secs_f64() * 1000.0;
                    if call.marks.is_empty() && turn.playout.end_ms().is_some_and(|played| ms_since(now) >= played + grace_ms) {
                        speaking = Some(0);
                        utterance_ended = None;
                        turn = TurnState::default();
                    }
                }
                let frame = match speaking {
                    Some(i) => {
                        if i == 0 {
                            turn.utterance = begun % frames.utterances.len();
                            begun += 1;
                            turn.window_frame = frames.utterances[turn.utterance].window_frame.map(|w| next_frame + w);
                        }
                        let utterance = &frames.utterances[turn.utterance];
                        speaking = (i + 1 < utterance.speech.len()).then_some(i + 1);
                        if speaking.is_none() {
                            utterance_ended = Some(now);
                        }
                        if i == utterance.last_voiced_frame {
                            turn.last_voiced_sent = Some(now);
                        }
                        &utterance.speech[i]
                    }
                    None => {
                        // An answer still playing is no timeout, however long it is.
                        if turn.first_audio.is_none() && utterance_ended.is_some_and(|t| now.duration_since(t) > TURN_TIMEOUT) {
                            report.timeouts += 1;
                            speaking = Some(0);
                            turn = TurnState::default();
                        }
                        &frames.silence
                    }
                };
                let text = line.input(frame);
                if sent.len() == SENT_FRAMES_KEPT {
                    sent.pop_front();
                }
                sent.push_back(now);
                if turn.window_frame == Some(next_frame) {
                    turn.window_sent = Some(now);
                }
                next_frame += 1;
                report.frames_sent += 1;
                if ws.send(Message::Text(text)).await.is_err() {
                    report.closed_by_server = true;
                    break;
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        report.closed_by_server = true;
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                let now = Instant::now();
                let event = match line.read(&text) {
                    Heard::Audio(ms) => {
                        report.deltas += 1;
                        if matches!(line, Line::Twilio(_)) && utterance_ended.is_none() {
                            // Audio of an answer taken as over, coming while the caller speaks again: a gap it heard.
                            report.underruns += 1;
                            continue;
                        }
                        let lead_ms = turn.playout.on_delta(ms_since(now), ms);
                        if lead_ms < 0.0 {
                            report.underruns += 1;
                        }
                        if turn.first_audio.is_some() {
                            // The first delta plays on arrival, lead 0 by definition.
                            report.min_lead_ms = Some(report.min_lead_ms.map_or(lead_ms, |m| m.min(lead_ms)));
                            continue;
                        }
                        turn.first_audio = Some(now);
                        if matches!(line, Line::Twilio(_)) {
                            // Twilio reports no turns: the first audio is all the client can measure.
                            report.turns.push(turn.turn());
                        }
                        continue;
                    }
                    Heard::Realtime(event) => event,
                    Heard::Mark(name) => {
                        let Line::Twilio(call) = &mut line else { continue };
                        let played = turn.playout.end_ms().map_or(now, |ms| epoch + Duration::from_secs_f64(ms / 1000.0));
                        let due = played.max(now);
                        if call.marks.is_empty() {
                            echo_at.as_mut().reset(due);
                        }
                        call.marks.push_back((due, name));
                        continue;
                    }
                    Heard::Clear => {
                        let Line::Twilio(call) = &mut line else { continue };
                        call.clears += 1;
                        for (due, _) in &mut call.marks {
                            *due = now;
                        }
                        echo_at.as_mut().reset(now);
                        continue;
                    }
                    Heard::Unreadable(what) => {
                        report.errors.push(what.into());
                        continue;
                    }
                    Heard::Other => continue,
                };
                match &*event.kind {
                    "response.output_audio.delta" => {
                        // `audio_delta` takes every delta voxgate writes; one it could not read is an error here.
                        report.errors.push("an audio delta whose audio could not be found".into());
                    }
                    "input_audio_buffer.speech_stopped" => {
                        let frame = completing_frame(event.audio_end_ms.unwrap_or(0) + silence_ms, holdback_16k);
                        let oldest = next_frame - sent.len() as u64;
                        turn.window_sent = frame.checked_sub(oldest).and_then(|i| sent.get(i as usize)).copied();
                        if turn.window_sent.is_none() {
                            report.unmatched_stops += 1;
                        }
                    }
                    "response.done" => {
                        let Some(response) = event.response else { continue };
                        let latency = response.voxgate.map(|v| v.latency_ms).unwrap_or_default();
                        if response.status != "completed" {
                            // Cancelled, or `incomplete` at max_output_tokens: its first audio still counts.
                            report.responses_not_completed += 1;
                        }
                        if let Some(voice_to_voice_ms) = latency.voice_to_voice {
                            report.turns.push(Turn {
                                voice_to_voice_ms: Some(voice_to_voice_ms),
                                stt_ms: latency.stt,
                                llm_ttft_ms: latency.llm_ttft,
                                tts_ttfb_ms: latency.tts_ttfb,
                                ..turn.turn()
                            });
                        }
                        if turn.first_audio.is_none() {
                            // No audio to wait for: speak again now.
                            speaking = Some(0);
                            turn = TurnState::default();
                        }
                    }
                    "output_audio_buffer.stopped" => {
                        speaking = Some(0);
                        utterance_ended = None;
                        turn = TurnState::default();
                    }
                    "error" => {
                        let message = event.error.map_or_else(|| text.to_string(), |e| e.to_string());
                        if report.errors.len() < 4 {
                            report.errors.push(message);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    report.active = began.elapsed();
    if let Line::Twilio(call) = &line {
        report.clears = call.clears;
    }
    let _ = ws.close(None).await;
    report
}

/// voxgate as a child process with the bench's config.
pub(super) struct Child {
    child: tokio::process::Child,
    pub(super) pid: u32,
    base: String,
    dir: PathBuf,
    /// The route sessions ask for.
    pub(super) route: &'static str,
}

impl Child {
    /// `script`: the sidecars that script the fake STT, one per utterance spoken.
    /// `stt_vendor`: the fake Deepgram the server hears through instead.
    pub(super) async fn start(
        max_sessions: usize,
        precise: bool,
        embedded: bool,
        script: &[PathBuf],
        stt_vendor: Option<SocketAddr>,
        tts_vendor: Option<(super::vendor::TtsVendor, SocketAddr)>,
    ) -> anyhow::Result<Child> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let dir = std::env::temp_dir().join(format!("voxgate-bench-pipeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let script = script.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
        let config_path = dir.join("voxgate.toml");
        let stt = match stt_vendor {
            Some(addr) => format!("[providers.dg]\nkind = \"deepgram\"\nbase_url = \"http://{addr}\"\n[stt]\nengines = [\"dg\"]\n"),
            None => format!("[stt]\nengine = \"fake\"\nscript = [{script}]\nlatency_ms = {STT_LATENCY_MS}\nprecise_timing = {precise}\n"),
        };
        let tts = match tts_vendor {
            Some((super::vendor::TtsVendor::Openai, addr)) => {
                format!("[providers.voice]\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\napi_key = \"bench\"\n[tts]\nengines = [\"voice\"]\n")
            }
            Some((super::vendor::TtsVendor::Elevenlabs, addr)) => {
                format!("[providers.voice]\nkind = \"elevenlabs\"\nbase_url = \"http://{addr}\"\napi_key = \"bench\"\n[tts]\nengines = [\"voice\"]\n")
            }
            None => format!("[tts]\nengine = \"fake\"\nttfb_ms = {TTS_TTFB_MS}\nprecise_timing = {precise}\n"),
        };
        let config = if embedded {
            // The defaults of `voxgate serve` with no config: embedded STT, LLM (route `default`) and TTS.
            format!("listen = \"127.0.0.1:{port}\"\n[realtime]\nmax_sessions = {max_sessions}\n")
        } else {
            format!(
                "listen = \"127.0.0.1:{port}\"\n\
                 [providers.fake]\nkind = \"fake\"\n\
                 [[models]]\nid = \"bench-voice\"\nprovider = \"fake\"\nupstream = \"slow-{LLM_TTFT_MS}{precise_llm}\"\n\
                 input_usd_per_mtok = 0.4\noutput_usd_per_mtok = 1.6\n\
                 [routes.bench]\nmodels = [\"bench-voice\"]\n\
                 {stt}\
                 {tts}\
                 [realtime]\nmax_sessions = {max_sessions}\n",
                precise_llm = if precise { "+precise" } else { "" },
            )
        };
        std::fs::write(&config_path, config)?;
        let child = super::spawn_server(&config_path, port)?;
        let pid = child.id().unwrap_or(0);
        let base = format!("http://127.0.0.1:{port}");
        let route = if embedded { "default" } else { "bench" };
        let child = Child { child, pid, base, dir, route };
        wait_ready(&super::bench_client(), &child.base).await?;
        Ok(child)
    }

    pub(super) fn ws_url(&self, transport: Transport) -> String {
        let base = self.base.replace("http://", "ws://");
        match transport {
            Transport::Realtime => format!("{base}/v1/realtime?model={}", self.route),
            Transport::Twilio => format!("{base}/v1/phone/twilio"),
        }
    }

    pub(super) fn rss_mb(&self) -> Option<f64> {
        status_kb(self.pid, "VmRSS:").map(|kb| kb / 1024.0)
    }

    async fn frames_dropped(&self) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.base)).await.ok()?.text().await.ok()?;
        Some(metric_total(&text, "voxgate_audio_frames_dropped_total"))
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the pipeline benchmark and returns a Markdown report.
pub async fn pipeline(options: PipelineOptions) -> anyhow::Result<String> {
    if options.embedded && options.transport == Transport::Twilio {
        // SmolLM2 talks for a minute unless the session caps its answer, which a Twilio call cannot.
        anyhow::bail!("--embedded runs over --transport realtime only: a Twilio call cannot set max_output_tokens");
    }
    let wavs = if options.wavs.is_empty() { vec![fixture_path("wav")] } else { options.wavs.clone() };
    let frames = Arc::new(load_frames(&wavs, options.transport)?);
    // The fake STT hears each WAV's sidecar, or the fixture's for a WAV without one.
    let script: Vec<PathBuf> =
        wavs.iter().map(|w| Some(w.with_extension("json")).filter(|s| s.is_file()).unwrap_or_else(|| fixture_path("json"))).collect();
    let holdback_16k = resampler_holdback_16k();
    let vendor = match options.stt_vendor && !options.embedded {
        true => {
            let text = crate::stt::fake::Sidecar::load(&script[0])?.utterances.first().map(|u| u.text.clone()).unwrap_or_default();
            let latency = Duration::from_millis(STT_LATENCY_MS);
            Some(super::vendor::start(&text, latency, options.precise_engine_timers).await?)
        }
        false => None,
    };
    let ttfb = Duration::from_millis(TTS_TTFB_MS);
    let tts_vendor = match options.tts_vendor.filter(|_| !options.embedded) {
        Some(kind @ super::vendor::TtsVendor::Openai) => Some((kind, super::vendor::start_tts(ttfb, options.precise_engine_timers).await?)),
        Some(kind @ super::vendor::TtsVendor::Elevenlabs) => {
            Some((kind, super::vendor::start_tts_ws(ttfb, options.precise_engine_timers).await?))
        }
        None => None,
    };
    let max_sessions = options.sessions.max(options.idle) + 16;
    let stt_vendor = vendor.as_ref().map(|v| v.addr);
    let child = Child::start(max_sessions, options.precise_engine_timers, options.embedded, &script, stt_vendor, tts_vendor).await?;
    let dial = Arc::new(Dial {
        transport: options.transport,
        url: child.ws_url(options.transport),
        route: child.route,
        setup: options.embedded.then_some(EMBEDDED_SESSION),
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = String::new();

    // Warm up: one session, so one-time allocations are not counted per session.
    let _ = connect(&dial, 0).await?.0.close(None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    if options.embedded && options.sessions > 0 {
        // One whole turn first: the models load and the engines make their first allocations.
        let now = Instant::now();
        let warm = run_client(dial.clone(), frames.clone(), holdback_16k, now, now, 0, now + EMBEDDED_WARM_UP).await;
        if warm.turns.is_empty() {
            anyhow::bail!(
                "the warm-up session got no answer in {} s (connected {}, frames sent {}, deltas {}, responses not completed {}, closed by the server {}, errors {:?})",
                EMBEDDED_WARM_UP.as_secs(),
                warm.connected,
                warm.frames_sent,
                warm.deltas,
                warm.responses_not_completed,
                warm.closed_by_server,
                warm.errors
            );
        }
    }

    if options.idle > 0 {
        idle(&child, &dial, options.idle, &mut out).await?;
    }
    if options.sessions > 0 {
        load(&child, &dial, frames, holdback_16k, &options, cores, &mut out).await?;
    }
    match tts_vendor.map(|(kind, _)| kind) {
        Some(super::vendor::TtsVendor::Openai) => {
            let _ = writeln!(out, "\nTTS: the OpenAI adapter, one request per chunk to a fake `/v1/audio/speech` in the bench process");
        }
        Some(super::vendor::TtsVendor::Elevenlabs) => {
            let _ = writeln!(
                out,
                "\nTTS: the ElevenLabs adapter, one `stream-input` WebSocket per answer to a fake vendor in the bench process"
            );
        }
        None => {}
    }
    if let Some(vendor) = &vendor {
        let _ = writeln!(
            out,
            "\nSTT: the Deepgram adapter, one WebSocket per call to a fake vendor in the bench process ({} transcripts sent)",
            vendor.finals()
        );
    }
    let peak = peak_rss_mb(child.pid).map_or("unknown".to_string(), |mb| format!("{mb:.1} MB"));
    let _ = writeln!(out, "\nvoxgate peak resident memory (VmHWM): {peak}");
    child.stop().await;
    Ok(out)
}

async fn idle(child: &Child, dial: &Dial, n: usize, out: &mut String) -> anyhow::Result<()> {
    let before = child.rss_mb();
    let sockets: Vec<anyhow::Result<Ws>> = futures::stream::iter(0..n)
        .map(|i| async move { connect(dial, i).await.map(|(ws, _)| ws) })
        .buffer_unordered(IDLE_CONNECTS_AT_ONCE)
        .collect()
        .await;
    let failed = sockets.iter().filter(|s| s.is_err()).count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with = child.rss_mb();
    let connected = n - failed;
    let opened = match dial.transport {
        Transport::Realtime => "`session.created` received, then 1 s of settling; nothing sent",
        Transport::Twilio => "`connected` and `start` sent, then 1 s of settling; no audio sent",
    };
    let _ = writeln!(out, "Idle sessions: connected, {opened}\n");
    let _ = writeln!(out, "| idle sessions | failed | RSS before MB | RSS with them MB | per idle session KB |");
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: |");
    let per = match (before, with) {
        (Some(b), Some(w)) if connected > 0 => format!("{:.1}", (w - b) * 1024.0 / connected as f64),
        _ => "unknown".into(),
    };
    let mb = |v: Option<f64>| v.map_or("unknown".into(), |v| format!("{v:.1}"));
    let _ = writeln!(out, "| {connected} | {failed} | {} | {} | {per} |\n", mb(before), mb(with));
    for mut ws in sockets.into_iter().flatten() {
        let _ = ws.close(None).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Nearest-rank percentiles of `values` as ` p50 | p95 | p99 | max |` cells.
fn quantile_cells(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let cell = |v: f64| if v.is_nan() { "–".to_string() } else { format!("{v:.2}") };
    format!(
        "{} | {} | {} | {} | {} |",
        values.len(),
        cell(percentile(&values, 0.50)),
        cell(percentile(&values, 0.95)),
        cell(percentile(&values, 0.99)),
        cell(values.last().copied().unwrap_or(f64::NAN))
    )
}

async fn load(
    child: &Child,
    dial: &Arc<Dial>,
    frames: Arc<Frames>,
    holdback_16k: u64,
    options: &PipelineOptions,
    cores: usize,
    out: &mut String,
) -> anyhow::Result<()> {
    let n = options.sessions;
    // Starts spread over up to 10 s (about one turn) so turns do not line up.
    let ramp = Duration::from_secs(options.seconds.clamp(1, 10));
    let dropped_before = child.frames_dropped().await.unwrap_or(0.0);
    let rss_before = child.rss_mb();
    let cpu_before = cpu_seconds(child.pid);
    let own_cpu_before = cpu_seconds(std::process::id());
    let machine_before = machine_cpu();
    let epoch = Instant::now();
    let end = epoch + ramp + Duration::from_secs(options.seconds);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let start = epoch + ramp.mul_f64(i as f64 / n as f64);
            tokio::spawn(run_client(dial.clone(), frames.clone(), holdback_16k, epoch, start, i, end))
        })
        .collect();
    let rss_loaded = {
        // RSS with every session running, a second before the end.
        sleep_until(end - Duration::from_secs(1)).await;
        child.rss_mb()
    };
    let mut reports = Vec::with_capacity(n);
    for task in tasks {
        reports.push(task.await.unwrap_or_default());
    }
    let wall = epoch.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(cpu_seconds(child.pid)).map(|(a, b)| b - a);
    let own_cpu = own_cpu_before.zip(cpu_seconds(std::process::id())).map(|(a, b)| b - a);
    // Machine busy share over the run; what neither voxgate nor the load generator used is other load.
    let machine = machine_before.zip(machine_cpu()).map(|((b0, t0), (b1, t1))| (b1 - b0) as f64 / (t1 - t0).max(1) as f64);
    let others = machine.zip(cpu.zip(own_cpu)).map(|(m, (v, o))| (m * wall * cores as f64 - v - o).max(0.0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = child.frames_dropped().await.map(|d| d - dropped_before);

    let engines = if options.embedded {
        EngineTimes { stt_ms: 0.0, llm_ttft_ms: 0.0, tts_ttfb_ms: 0.0, ..EngineTimes::bench() }
    } else {
        EngineTimes::bench()
    };
    let turns: Vec<Turn> = reports.iter().flat_map(|r| r.turns.iter().copied()).collect();
    let sum = |f: fn(&SessionReport) -> u64| reports.iter().map(f).sum::<u64>();
    let connected = reports.iter().filter(|r| r.connected).count();
    let session_seconds: f64 = reports.iter().map(|r| r.active.as_secs_f64()).sum();
    let min_lead = reports.iter().filter_map(|r| r.min_lead_ms).min_by(f64::total_cmp);
    let max_lateness = reports.iter().map(|r| r.max_tick_lateness_ms).fold(0.0, f64::max);

    let over = match options.transport {
        Transport::Realtime => "",
        Transport::Twilio => {
            " over Twilio Media Streams (`/v1/phone/twilio`: μ-law 8 kHz in 20 ms `media` frames, each `mark` echoed once the audio \
             before it has played)"
        }
    };
    if options.embedded {
        let _ = writeln!(
            out,
            "{n} sessions, starts spread over {} s, then {} s with all running; embedded engines with the defaults of \
             `voxgate serve` (Whisper tiny.en, SmolLM2-135M-Instruct, Piper en_US-joe-medium), {} ms silence window; \
             voxgate and the load generator share {cores} cores\n",
            ramp.as_secs(),
            options.seconds,
            engines.silence_ms,
        );
    } else {
        let _ = writeln!(
            out,
            "{n} sessions{over}, starts spread over {} s, then {} s with all running; fake engines: STT {STT_LATENCY_MS} ms after the \
             {} ms silence window, LLM time to first token {LLM_TTFT_MS} ms, TTS first audio {TTS_TTFB_MS} ms, \
             waiting with {}; voxgate and the load generator share {cores} cores\n",
            ramp.as_secs(),
            options.seconds,
            engines.silence_ms,
            if options.precise_engine_timers { "a precise timer thread" } else { "tokio's 1 ms timer" },
        );
    }
    let spoken: Vec<String> = frames
        .utterances
        .iter()
        .map(|u| format!("`{}` ({:.0} ms, last voiced sample at {:.0} ms)", u.name, u.duration_ms, u.last_voiced_ms))
        .collect();
    let _ = writeln!(
        out,
        "Each session speaks, one after another: {}. The last voiced sample, found in the audio: the end of the last \
         {VOICED_WINDOW_MS} ms window within {VOICED_BELOW_PEAK_DB} dB of the loudest and {VOICED_ABOVE_FLOOR_DB} dB above the \
         noise floor (the {NOISE_FLOOR_QUANTILE} quantile of the windows).\n",
        spoken.join(", ")
    );
    let _ = writeln!(out, "| per turn, ms | turns | p50 | p95 | p99 | max |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let column = |f: &dyn Fn(&Turn) -> Option<f64>| quantile_cells(turns.iter().filter_map(f).collect());
    let mic_row: Row = ("client: last voiced frame sent → first audio received", &|t| t.mic_ms);
    let embedded_rows: [Row; 6] = [
        ("**last voiced frame sent → first audio received, client clock** (first agent audio as a microphone client sees it)", &|t| {
            t.mic_ms
        }),
        ("**end of user speech → first agent audio, server clock** (voice_to_voice, silence window included)", &|t| t.voice_to_voice_ms),
        ("client: window-completing frame sent → first audio received", &|t| t.client_ms),
        ("STT: turn committed → final transcript (stt − silence)", &|t| t.stt_ms.map(|s| s - engines.silence_ms)),
        ("LLM: time to first token", &|t| t.llm_ttft_ms),
        ("TTS: time to first audio", &|t| t.tts_ttfb_ms),
    ];
    let fake_rows: [Row; 8] = [
        ("**overhead, server clock** (voice_to_voice − silence − engines)", &|t| {
            t.voice_to_voice_ms.map(|v| engines.server_overhead_ms(v))
        }),
        ("**overhead, client clock** (window-completing frame sent → first audio received − engines)", &|t| {
            t.client_ms.map(|c| engines.client_overhead_ms(c))
        }),
        ("of which STT stage (stt − silence − STT latency)", &|t| t.stt_ms.map(|s| s - engines.silence_ms - engines.stt_ms)),
        ("of which LLM stage (llm_ttft − TTFT)", &|t| t.llm_ttft_ms.map(|s| s - engines.llm_ttft_ms)),
        ("of which TTS stage (tts_ttfb − TTFB)", &|t| t.tts_ttfb_ms.map(|s| s - engines.tts_ttfb_ms)),
        ("voice_to_voice as reported", &|t| t.voice_to_voice_ms),
        ("client: window-completing frame sent → first audio received", &|t| t.client_ms),
        mic_row,
    ];
    // Twilio reports no turns: only the client's clock measures them.
    let client_rows = [fake_rows[1], fake_rows[6], mic_row];
    let rows: &[Row] = match (options.embedded, options.transport) {
        (true, _) => &embedded_rows,
        (false, Transport::Realtime) => &fake_rows,
        (false, Transport::Twilio) => &client_rows,
    };
    for (name, f) in rows {
        let _ = writeln!(out, "| {name} | {}", column(f));
    }
    if frames.utterances.len() > 1 {
        let _ = writeln!(out, "\n| per turn, ms, by utterance | turns | p50 | p95 | p99 | max |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
        let by_utterance: &[Row] = match options.transport {
            Transport::Realtime => &[mic_row, ("voice_to_voice as reported", &|t| t.voice_to_voice_ms)],
            Transport::Twilio => &[mic_row],
        };
        for (i, utterance) in frames.utterances.iter().enumerate() {
            for (name, f) in by_utterance {
                let _ = writeln!(out, "| `{}`: {name} | {}", utterance.name, column(&|t| f(t).filter(|_| t.utterance == i)));
            }
        }
    }

    let dropped_cell = dropped.map_or("unknown".into(), |d| format!("{d:.0}"));
    let lead_cell = min_lead.map_or("–".into(), |l| format!("{l:.1}"));
    let unit = options.transport.output_unit();
    let _ = writeln!(
        out,
        "\n| input frames sent | dropped by the server | output {unit} | late {unit} (underruns) | smallest lead ms | \
         client ticks ≥ 20 ms late | worst tick lateness ms |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        out,
        "| {} | {dropped_cell} | {} | {} | {lead_cell} | {} | {max_lateness:.1} |",
        sum(|r| r.frames_sent),
        sum(|r| r.deltas),
        sum(|r| r.underruns),
        sum(|r| r.late_ticks)
    );

    let cpu_cell = |c: Option<f64>| c.map_or("unknown".into(), |c| format!("{:.0}", c / wall / cores as f64 * 100.0));
    let per_session_ms = cpu.map_or("unknown".into(), |c| format!("{:.2}", c * 1000.0 / session_seconds.max(1e-9)));
    let rss_per = match (rss_before, rss_loaded) {
        (Some(b), Some(l)) => format!("{:.0}", (l - b) * 1024.0 / n as f64),
        _ => "unknown".into(),
    };
    let _ = writeln!(
        out,
        "\n| voxgate CPU s | per session-second ms | voxgate % of {cores} cores | load generator % of {cores} cores | \
         other processes % | voxgate RSS before MB | RSS under load MB | RSS per active session KB |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mb = |v: Option<f64>| v.map_or("unknown".into(), |v| format!("{v:.1}"));
    let _ = writeln!(
        out,
        "| {} | {per_session_ms} | {} | {} | {} | {} | {} | {rss_per} |",
        cpu.map_or("unknown".into(), |c| format!("{c:.1}")),
        cpu_cell(cpu),
        cpu_cell(own_cpu),
        cpu_cell(others),
        mb(rss_before),
        mb(rss_loaded)
    );

    if let Some(o) = others.filter(|o| o / wall / cores as f64 > 0.1) {
        let _ = writeln!(
            out,
            "\n**Warning**: other processes used {:.0}% of the cores during the run; these figures do not describe an otherwise idle machine.",
            o / wall / cores as f64 * 100.0
        );
    }
    let errors: Vec<&String> = reports.iter().flat_map(|r| r.errors.iter()).take(3).collect();
    let (cut, cut_count) = match options.transport {
        Transport::Realtime => ("responses not completed (cancelled or cut at max_output_tokens)", sum(|r| r.responses_not_completed)),
        Transport::Twilio => ("`clear`s received (taken for barge-ins)", sum(|r| r.clears)),
    };
    let _ = writeln!(
        out,
        "\nsessions connected {connected}/{n}, answered (audio received) {}, closed by the server {}, {cut} {cut_count}, turns timed out {}, \
         stops without a matching frame {}, error events {}{}",
        reports.iter().filter(|r| r.deltas > 0).count(),
        reports.iter().filter(|r| r.closed_by_server).count(),
        sum(|r| r.timeouts),
        sum(|r| r.unmatched_stops),
        reports.iter().map(|r| r.errors.len()).sum::<usize>(),
        if errors.is_empty() { String::new() } else { format!(" (first: {errors:?})") }
    );
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn clients_frame_clocks_are_spread_over_the_period() {
        let epoch = Instant::now();
        let mut phases: Vec<Duration> = (0..500).map(frame_phase).collect();
        phases.sort();
        let widest_gap = phases.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(phases[0] < Duration::from_micros(100) && phases[499] > Duration::from_micros(19_900));
        assert!(widest_gap < Duration::from_micros(100), "{widest_gap:?}");
        for (now_ms, phase_us, want_us) in [(0u64, 5_000u64, 5_000u64), (7, 5_000, 25_000), (20, 0, 20_000), (41, 19_999, 59_999)] {
            let at = next_on_phase(epoch, epoch + Duration::from_millis(now_ms), Duration::from_micros(phase_us));
            assert_eq!(at.duration_since(epoch), Duration::from_micros(want_us), "now {now_ms} ms, phase {phase_us} µs");
        }
    }
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn overhead_subtracts_the_window_and_the_engines() {
        let e = EngineTimes { silence_ms: 500.0, stt_ms: 150.0, llm_ttft_ms: 200.0, tts_ttfb_ms: 80.0 };
        assert!((e.server_overhead_ms(932.5) - 2.5).abs() < 1e-9);
        assert!((e.client_overhead_ms(433.0) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_completing_frame_accounts_for_the_resampler() {
        // Without holdback, a window ending on a frame boundary completes with the frame before it.
        assert_eq!(completing_frame(5_800, 0), 289);
        assert_eq!(completing_frame(5_790, 0), 289);
        // With any holdback it needs the next frame; mid-frame ends are unaffected.
        assert_eq!(completing_frame(5_800, 6), 290);
        assert_eq!(completing_frame(5_790, 6), 289);
        assert_eq!(completing_frame(5_810, 6), 290);
        assert_eq!(completing_frame(0, 0), 0);
    }

    #[test]
    fn the_server_resampler_holds_back_a_few_samples() {
        let h = resampler_holdback_16k();
        assert!((1..32).contains(&h), "{h}");
    }

    #[test]
    fn audio_deltas_are_found_in_the_events_voxgate_writes() {
        use crate::transport::realtime::ServerEvent;
        let audio = base64::engine::general_purpose::STANDARD.encode(vec![7u8; FRAME_SAMPLES * 2]);
        let event = ServerEvent::ResponseOutputAudioDelta {
            event_id: "event_1".into(),
            response_id: "resp_1".into(),
            item_id: "item_1".into(),
            output_index: 0,
            content_index: 0,
            delta: audio.clone(),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(audio_delta(&text), Some(audio.as_str()));
        let transcript = ServerEvent::ResponseOutputAudioTranscriptDelta {
            event_id: "event_2".into(),
            response_id: "resp_1".into(),
            item_id: "item_1".into(),
            output_index: 0,
            content_index: 0,
            delta: "Hello".into(),
        };
        assert_eq!(audio_delta(&serde_json::to_string(&transcript).unwrap()), None);
        // Not base64 (an escape, say): left to the JSON parser.
        assert_eq!(audio_delta(r#"{"type":"response.output_audio.delta","delta":"a\u0041"}"#), None);
    }

    #[test]
    fn twilio_media_is_found_in_the_frames_voxgate_writes() {
        let payload = base64::engine::general_purpose::STANDARD.encode([0xffu8; 160]);
        // As `transport::twilio` writes it.
        let media = serde_json::json!({"event": "media", "streamSid": "MZ1", "media": {"payload": payload}}).to_string();
        assert_eq!(twilio_media(&media), Some(payload.as_str()));
        assert!((base64_ulaw_ms(&payload) - 20.0).abs() < 1e-9);
        let mark = serde_json::json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": "voxgate-1"}}).to_string();
        assert_eq!(twilio_media(&mark), None);
        let Heard::Mark(name) = Line::Twilio(Call::new(0)).read(&mark) else { panic!("{mark} is a mark") };
        assert_eq!(name, "voxgate-1");
        assert!(matches!(Line::Twilio(Call::new(0)).read(r#"{"event":"clear","streamSid":"MZ1"}"#), Heard::Clear));
    }

    #[test]
    fn a_call_numbers_its_frames_and_echoes_marks_once_played() {
        let mut call = Call::new(7);
        let start: serde_json::Value = serde_json::from_str(&call.start("bench")).unwrap();
        assert_eq!(start["start"]["customParameters"]["model"], "bench");
        assert_eq!(start["start"]["streamSid"], start["streamSid"]);
        let media: serde_json::Value = serde_json::from_str(&call.media("AAAA")).unwrap();
        assert_eq!(
            (&media["sequenceNumber"], &media["media"]["chunk"], &media["media"]["payload"]),
            (&"2".into(), &"1".into(), &"AAAA".into())
        );
        let now = Instant::now();
        call.marks.push_back((now + Duration::from_millis(20), "voxgate-1".into()));
        assert!(call.echo_due(now).is_none());
        let echo: serde_json::Value = serde_json::from_str(&call.echo_due(now + Duration::from_millis(20)).unwrap()).unwrap();
        assert_eq!((&echo["event"], &echo["mark"]["name"], &echo["sequenceNumber"]), (&"mark".into(), &"voxgate-1".into(), &"3".into()));
    }

    #[test]
    fn the_window_completes_half_a_second_after_the_fixtures_speech_on_every_turn() {
        let frames = load_frames(&[fixture_path("wav")], Transport::Twilio).unwrap();
        let utterance = &frames.utterances[0];
        let window = utterance.window_frame.unwrap();
        // The sidecar's last word ends at 5 786 ms: the window ends 500 ms later, in frame 314.
        assert!((312..=316).contains(&window), "{window}");
        // Whatever silence came before the utterance, the same frame of it completes the window.
        let base64 = base64::engine::general_purpose::STANDARD;
        let pcm: Vec<i16> = utterance.speech.iter().flat_map(|p| base64.decode(p.as_str()).unwrap()).map(ulaw_decode).collect();
        for silent_frames in [0usize, 1, 7, 250] {
            let after_silence = [vec![0; silent_frames * 160], pcm.clone()].concat();
            assert_eq!(window_completing_frame(&after_silence), Some(window + silent_frames as u64), "{silent_frames}");
        }
    }

    #[test]
    fn the_last_voiced_sample_is_where_the_sidecars_last_word_ends() {
        let dir = fixture_path("wav").parent().unwrap().to_path_buf();
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let wav = entry.unwrap().path();
            if wav.extension().is_none_or(|e| e != "wav") {
                continue;
            }
            let Ok(sidecar) = crate::stt::fake::Sidecar::load(&wav.with_extension("json")) else { continue };
            let Some(last_word_end_ms) = sidecar.utterances.iter().flat_map(|u| &u.words).map(|w| w.end_ms).next_back() else {
                continue;
            };
            let frames = load_frames(std::slice::from_ref(&wav), Transport::Realtime).unwrap();
            let u = &frames.utterances[0];
            // Noise included (`noisy_taxi`): the floor rule keeps it out.
            assert!((u.last_voiced_ms - last_word_end_ms as f64).abs() <= 15.0, "{}: {} ms", u.name, u.last_voiced_ms);
            assert_eq!(u.last_voiced_frame, (u.last_voiced_ms as u64 - 1) as usize / FRAME_MS as usize, "{}", u.name);
            checked += 1;
        }
        assert!(checked >= 10, "{checked}");
    }

    #[test]
    fn the_last_voiced_sample_counts_a_quiet_tail_and_not_a_noise_floor() {
        let rate_hz = 24_000;
        let tone = |ms: usize, amplitude: f64| -> Vec<i16> { (0..ms * 24).map(|i| (amplitude * (i as f64 * 0.2).sin()) as i16).collect() };
        // 300 ms of silence, 500 ms at about -12 dBFS, 50 ms 35 dB quieter, then silence.
        let pcm = [tone(300, 0.0), tone(500, 8000.0), tone(50, 8000.0 / 56.0), tone(400, 0.0)].concat();
        assert_eq!(last_voiced_sample(&pcm, rate_hz), Some(850 * 24 - 1));
        // 45 dB quieter is no longer voiced.
        let pcm = [tone(300, 0.0), tone(500, 8000.0), tone(50, 8000.0 / 178.0), tone(400, 0.0)].concat();
        assert_eq!(last_voiced_sample(&pcm, rate_hz), Some(800 * 24 - 1));
        // Under steady noise 30 dB below the speech, the speech ends where it ends, not at the noise's end.
        let noise = |ms: usize| tone(ms, 8000.0 / 32.0);
        let pcm = [noise(300), tone(500, 8000.0), noise(400)].concat();
        assert_eq!(last_voiced_sample(&pcm, rate_hz), Some(800 * 24 - 1));
        assert_eq!(last_voiced_sample(&[0; 4800], rate_hz), None);
        assert_eq!(last_voiced_sample(&[], rate_hz), None);
    }

    #[test]
    fn transports_by_name() {
        assert_eq!("twilio".parse(), Ok(Transport::Twilio));
        assert_eq!("realtime".parse(), Ok(Transport::Realtime));
        assert!("sip".parse::<Transport>().is_err());
    }

    #[test]
    fn base64_length_gives_audio_length() {
        let twenty_ms = base64::engine::general_purpose::STANDARD.encode(vec![0u8; FRAME_SAMPLES * 2]);
        assert!((base64_pcm16_ms(&twenty_ms) - 20.0).abs() < 1e-9);
        let one_sample = base64::engine::general_purpose::STANDARD.encode([1u8, 2]);
        assert!((base64_pcm16_ms(&one_sample) - 1000.0 / 24_000.0).abs() < 1e-9);
        assert_eq!(base64_pcm16_ms(""), 0.0);
    }

    #[test]
    fn metric_total_sums_every_series_of_one_name() {
        let text = "# HELP voxgate_audio_frames_dropped_total x\n\
                    voxgate_audio_frames_dropped_total{stage=\"input\"} 3\n\
                    voxgate_audio_frames_dropped_total{stage=\"stt\"} 4\n\
                    voxgate_audio_frames_dropped_total_other 100\n";
        assert_eq!(metric_total(text, "voxgate_audio_frames_dropped_total"), 7.0);
        assert_eq!(metric_total("", "voxgate_audio_frames_dropped_total"), 0.0);
    }

    #[test]
    fn machine_cpu_counts_busy_and_total_ticks() {
        let stat = "cpu  100 5 20 1000 7 0 3 2 0 0\ncpu0 50 0 10 500 3 0 1 1 0 0\n";
        assert_eq!(machine_cpu_ticks(stat), Some((130, 1137)));
        assert_eq!(machine_cpu_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn playout_lead_and_gaps() {
        let mut p = Playout::default();
        // The first delta plays on arrival.
        assert_eq!(p.on_delta(1_000.0, 20.0), 0.0);
        // Sent ahead: 100 ms of audio in the first 10 ms.
        assert_eq!(p.on_delta(1_005.0, 20.0), 15.0);
        // Due at 1 040 ms; arriving at 1 050 leaves a 10 ms gap.
        assert_eq!(p.on_delta(1_050.0, 20.0), -10.0);
    }
}
