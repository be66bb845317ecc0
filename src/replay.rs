//! `voxgate replay FILE.wav`: one recording through the whole voice pipeline, offline and in process,
//! exactly as a caller on `/v1/realtime` would be served (the same session actor, engines and gateway),
//! with no socket. The audio is fed at real time, so every latency is the one a caller would see; the
//! result is a timeline of the session's events and the agent's reply audio as a WAV.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::audio::{Resampler, REALTIME_PCM_RATE_HZ};
use crate::config::Config;
use crate::llm::router::Gateway;
use crate::session::{run_session, Command, Inbound, Outbound, SessionStart, VoiceEngines};
use crate::transport::realtime::mapper::Projection;
use crate::transport::realtime::{new_session_id, ServerEvent};

/// Audio per `input_audio_buffer.append`, as a microphone client sends it.
const FRAME_MS: usize = 20;
/// Silence fed after the recording so the last turn ends.
const TAIL_SILENCE_MS: usize = 1_500;
/// How long to wait for the answers once the recording and its tail have been fed.
const ANSWER_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {message}")]
    Wav { path: PathBuf, message: String },
    #[error("{0}")]
    Setup(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// One line of the timeline: what happened, when (ms from the first audio fed).
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    pub t_ms: f64,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub input: PathBuf,
    pub input_seconds: f64,
    pub transcripts: Vec<String>,
    pub answers: Vec<String>,
    /// `response.voxgate` of each response: the model that served and the stage latencies.
    pub responses: Vec<serde_json::Value>,
    pub timeline: Vec<Mark>,
    pub errors: Vec<String>,
    /// Where the reply audio was written, with its length.
    pub out: Option<PathBuf>,
    pub out_seconds: f64,
}

/// Replays `input` through a session on `route` and writes the reply audio to `out`.
pub async fn replay(config: &Config, route: &str, input: &Path, out: &Path) -> Result<Report, ReplayError> {
    let (samples, rate_hz) = read_wav(input)?;
    let mut pcm = Vec::with_capacity(samples.len() * REALTIME_PCM_RATE_HZ as usize / rate_hz as usize + 16);
    let mut resampler =
        Resampler::new(rate_hz, REALTIME_PCM_RATE_HZ).map_err(|e| ReplayError::Wav { path: input.into(), message: e.to_string() })?;
    resampler.process(&samples, &mut pcm);
    resampler.flush(&mut pcm);
    let input_seconds = samples.len() as f64 / rate_hz as f64;

    let gateway = Arc::new(Gateway::new(config).map_err(|e| ReplayError::Setup(e.to_string()))?);
    if !gateway.routes().contains_key(route) && !gateway.models().contains_key(route) {
        return Err(ReplayError::Setup(format!("{route:?} is not a route or model of this config (use --model)")));
    }
    // Nobody listens to a replay in real time: send the reply audio as fast as it is made.
    let mut config = config.clone();
    config.realtime.output_lead_ms = 3_600_000;
    let engines = Arc::new(VoiceEngines::from_config(&config, gateway).map_err(ReplayError::Setup)?);
    if engines.stt.is_none() {
        return Err(ReplayError::Setup("replay needs a speech-to-text engine: set [stt] engine in the config".into()));
    }
    let start = SessionStart { session_id: new_session_id(), route: route.to_string(), key: "replay".into(), limits: None };
    let (in_tx, in_rx) = mpsc::channel(256);
    let (out_tx, mut out_rx) = mpsc::channel(4096);
    let cancel = CancellationToken::new();
    let session = tokio::spawn(run_session(engines, start, None, None, in_rx, out_tx, cancel.clone()));

    let began = Instant::now();
    let ms = |t: Instant| t.duration_since(began).as_secs_f64() * 1000.0;
    let frame = REALTIME_PCM_RATE_HZ as usize * FRAME_MS / 1000;
    let total_frames = pcm.len().div_ceil(frame) + TAIL_SILENCE_MS / FRAME_MS;
    let show_progress = std::io::stderr().is_terminal();

    // Feed at real time, one 20 ms frame per tick, while collecting what the session says.
    let feeder = {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(FRAME_MS as u64));
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let silence = vec![0i16; frame];
            for i in 0..total_frames {
                tick.tick().await;
                let chunk = pcm.get(i * frame..((i + 1) * frame).min(pcm.len())).filter(|c| !c.is_empty()).unwrap_or(&silence);
                let audio = Command::Audio { samples: chunk.to_vec(), rate_hz: REALTIME_PCM_RATE_HZ };
                if in_tx.send(Inbound::from(audio)).await.is_err() {
                    return;
                }
                if show_progress && i % 25 == 0 {
                    eprint!("\rreplay: {:>6.1} s / {:.1} s fed", (i * FRAME_MS) as f64 / 1000.0, (total_frames * FRAME_MS) as f64 / 1000.0);
                }
            }
            if show_progress {
                eprintln!();
            }
        })
    };

    let mut report = Report {
        input: input.to_path_buf(),
        input_seconds,
        transcripts: Vec::new(),
        answers: Vec::new(),
        responses: Vec::new(),
        timeline: Vec::new(),
        errors: Vec::new(),
        out: None,
        out_seconds: 0.0,
    };
    let mut reply: Vec<i16> = Vec::new();
    let mut open_responses = 0usize;
    // Turns whose speech ended and whose transcript has not come back yet.
    let mut transcribing = 0usize;
    let mut playing = false;
    let mut fed_at: Option<Instant> = None;
    let mut last_event = Instant::now();
    let mut feeder = feeder;
    // The session's events as a Realtime client reads them.
    let mut projection = Projection::default();
    let mut events: Vec<ServerEvent> = Vec::new();
    loop {
        let quiet = open_responses == 0 && !playing && transcribing == 0;
        // Once everything is fed: stop half a second after the last event when nothing is in
        // flight (a turn still being transcribed shows up well within that), or give up after ANSWER_WAIT.
        let wake = fed_at.map(|fed| if quiet { last_event.max(fed) + Duration::from_millis(500) } else { fed + ANSWER_WAIT });
        tokio::select! {
            r = &mut feeder, if fed_at.is_none() => {
                let _ = r;
                fed_at = Some(Instant::now());
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                if !quiet {
                    report.errors.push(format!("gave up waiting for the answer {} s after the recording ended", ANSWER_WAIT.as_secs()));
                }
                break;
            }
            msg = out_rx.recv() => {
                let Some(Outbound::Event(event)) = msg else { break };
                last_event = Instant::now();
                let now = ms(last_event);
                let mut mark = |event: &str, detail: Option<String>| report.timeline.push(Mark { t_ms: now, event: event.into(), detail });
                projection.events(*event, |e| events.push(e));
                for event in events.drain(..) {
                match event {
                    ServerEvent::InputAudioBufferSpeechStarted { audio_start_ms, .. } => mark("speech_started", Some(format!("audio_start_ms={audio_start_ms}"))),
                    ServerEvent::InputAudioBufferSpeechStopped { audio_end_ms, .. } => {
                        transcribing += 1;
                        mark("speech_stopped", Some(format!("audio_end_ms={audio_end_ms}")));
                    }
                    ServerEvent::InputAudioTranscriptionCompleted { transcript, .. } => {
                        transcribing = transcribing.saturating_sub(1);
                        mark("transcript", Some(transcript.clone()));
                        report.transcripts.push(transcript);
                    }
                    ServerEvent::InputAudioTranscriptionFailed { error, .. } => {
                        transcribing = transcribing.saturating_sub(1);
                        mark("transcript_failed", Some(error.message.clone()));
                        report.errors.push(error.message);
                    }
                    ServerEvent::ResponseCreated { .. } => {
                        open_responses += 1;
                        mark("response_created", None);
                    }
                    ServerEvent::OutputAudioBufferStarted { .. } => {
                        playing = true;
                        mark("first_audio", None);
                    }
                    ServerEvent::OutputAudioBufferStopped { .. } | ServerEvent::OutputAudioBufferCleared { .. } => {
                        playing = false;
                        mark("audio_ended", None);
                    }
                    ServerEvent::ResponseOutputAudioDelta { delta, .. } => {
                        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(delta) {
                            reply.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
                        }
                    }
                    ServerEvent::ResponseDone { response, .. } => {
                        open_responses = open_responses.saturating_sub(1);
                        let text: Vec<String> = response
                            .output
                            .iter()
                            .filter_map(|item| match item {
                                crate::transport::realtime::Item::Message(m) => Some(crate::transport::realtime::mapper::message_text(&m.content)),
                                crate::transport::realtime::Item::FunctionCall(c) => Some(format!("[tool call {}({})]", c.name, c.arguments)),
                                _ => None,
                            })
                            .collect();
                        let answer = text.join(" ");
                        mark("response_done", Some(format!("{:?}: {answer}", response.status)));
                        report.answers.push(answer);
                        report.responses.push(serde_json::to_value(&response.voxgate).unwrap_or_default());
                        if let Some(details) = response.status_details.and_then(|d| d.error) {
                            report.errors.push(details.message.unwrap_or_default());
                        }
                    }
                    ServerEvent::Error { error, .. } => {
                        mark("error", Some(error.message.clone()));
                        report.errors.push(error.message);
                    }
                    _ => {}
                }
                }
            }
        }
    }
    drop(in_tx);
    cancel.cancel();
    let _ = session.await;

    if !reply.is_empty() {
        write_wav_atomically(out, &reply, REALTIME_PCM_RATE_HZ)?;
        report.out = Some(out.to_path_buf());
        report.out_seconds = reply.len() as f64 / REALTIME_PCM_RATE_HZ as f64;
    }
    Ok(report)
}

/// The timeline as text, one line per event, then the per-response latencies.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{} ({:.1} s)", report.input.display(), report.input_seconds);
    for m in &report.timeline {
        let _ = writeln!(s, "{:>9.1} ms  {:<17} {}", m.t_ms, m.event, m.detail.as_deref().unwrap_or(""));
    }
    for (i, r) in report.responses.iter().enumerate() {
        let lat = &r["latency_ms"];
        let f = |k: &str| lat[k].as_f64().map_or("-".to_string(), |v| format!("{v:.0} ms"));
        let _ = writeln!(
            s,
            "response {}: model {}  stt {}  llm ttft {}  tts ttfb {}  voice-to-voice {}",
            i + 1,
            r["model"].as_str().unwrap_or("-"),
            f("stt"),
            f("llm_ttft"),
            f("tts_ttfb"),
            f("voice_to_voice")
        );
    }
    for e in &report.errors {
        let _ = writeln!(s, "error: {e}");
    }
    match &report.out {
        Some(p) => {
            let _ = writeln!(s, "reply audio: {} ({:.1} s)", p.display(), report.out_seconds);
        }
        None => {
            let _ = writeln!(s, "no reply audio");
        }
    }
    s
}

fn read_wav(path: &Path) -> Result<(Vec<i16>, u32), ReplayError> {
    let err = |message: String| ReplayError::Wav { path: path.to_path_buf(), message };
    let mut reader = hound::WavReader::open(path).map_err(|e| err(e.to_string()))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(err(format!("it is {}-bit {:?}; replay reads 16-bit PCM WAV", spec.bits_per_sample, spec.sample_format)));
    }
    let channels = spec.channels.max(1) as usize;
    let all: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().map_err(|e| err(e.to_string()))?;
    // Mix down to mono.
    let mono = all.chunks(channels).map(|c| (c.iter().map(|&s| s as i32).sum::<i32>() / c.len() as i32) as i16).collect();
    Ok((mono, spec.sample_rate))
}

/// Writes the WAV to a temporary file beside `path` and renames it into place: never a half-written file.
fn write_wav_atomically(path: &Path, samples: &[i16], rate_hz: u32) -> Result<(), ReplayError> {
    let werr = |source: std::io::Error| ReplayError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("wav.partial");
    let spec = hound::WavSpec { channels: 1, sample_rate: rate_hz, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let result = (|| -> Result<(), hound::Error> {
        let mut writer = hound::WavWriter::create(&tmp, spec)?;
        for &s in samples {
            writer.write_sample(s)?;
        }
        writer.finalize()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(std::io::Error::other(e.to_string())));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e)
    })
}
