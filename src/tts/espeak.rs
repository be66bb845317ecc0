//! The light text-to-speech engine: the `espeak-ng` program, run as a separate process for each
//! piece of text (`espeak-ng --stdout`: a WAV file on stdout, 22 050 Hz). It needs no model files
//! and speaks in a few milliseconds, robotically; it is the engine for machines without the Piper
//! voice. The helpers here (running the program, cutting long text) are shared with Piper, which
//! takes its phonemes from the same program.
//!
//! espeak-ng is GPL-3.0-or-later, so it is only ever run as a program and never linked into our
//! binary (see `docs/licences.md`).

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{BoxFuture, TextToSpeech, TtsError};

/// The program name looked up on `PATH`.
pub const ESPEAK_PROGRAM: &str = "espeak-ng";
/// The sample rate of espeak-ng's voices.
pub const ESPEAK_RATE_HZ: u32 = 22_050;
/// Audio frames sent to the session are this long, so it can pace them.
pub const FRAME_MS: u32 = 20;
/// Text longer than this is cut at spaces and spoken piece by piece.
pub const PIECE_CHARS_MAX: usize = 400;

/// The espeak-ng engine. See the module doc.
#[derive(Debug, Clone)]
pub struct EspeakTts {
    program: PathBuf,
    voice: String,
}

impl EspeakTts {
    /// An engine speaking with the espeak-ng voice `voice` (for example `en-us`). Runs the program
    /// once (`--version`) so a missing installation is reported now, not on the first answer.
    pub fn new(voice: &str) -> Result<EspeakTts, TtsError> {
        EspeakTts::with_program(PathBuf::from(ESPEAK_PROGRAM), voice)
    }

    fn with_program(program: PathBuf, voice: &str) -> Result<EspeakTts, TtsError> {
        let voice = voice.trim();
        if voice.is_empty() || !voice.chars().all(|c| c.is_ascii_alphanumeric() || "-_+/".contains(c)) || voice.starts_with('-') {
            return Err(TtsError::Unavailable(format!("{voice:?} is not an espeak-ng voice name (for example `en-us`)")));
        }
        check_program(&program)?;
        Ok(EspeakTts { program, voice: voice.to_owned() })
    }
}

/// Run `program --version` and turn failure into an [`TtsError::Unavailable`] that says what to install.
pub(crate) fn check_program(program: &std::path::Path) -> Result<(), TtsError> {
    match std::process::Command::new(program).arg("--version").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(TtsError::Unavailable(format!(
            "`{} --version` failed ({status}); reinstall the Debian package `espeak-ng` (apt-get install espeak-ng)",
            program.display()
        ))),
        Err(e) => Err(program_missing(program, &e)),
    }
}

pub(crate) fn program_missing(program: &std::path::Path, error: &std::io::Error) -> TtsError {
    TtsError::Unavailable(format!(
        "the program `{}` could not be started ({error}); install the Debian package `espeak-ng` (apt-get install espeak-ng)",
        program.display()
    ))
}

/// Run espeak-ng with `args`, `text` on stdin, and return its stdout. The process is killed when
/// the returned future is dropped.
pub(crate) async fn run_program(program: &std::path::Path, args: &[&str], text: &str) -> Result<Vec<u8>, TtsError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| program_missing(program, &e))?;
    let mut stdin = child.stdin.take().ok_or_else(|| TtsError::Engine("espeak-ng has no stdin".into()))?;
    // Feed stdin while reading stdout, so a large output cannot block the writer.
    let input = text.as_bytes().to_vec();
    let writer = async move {
        let result = stdin.write_all(&input).await;
        drop(stdin);
        result
    };
    let (written, output) = tokio::join!(writer, child.wait_with_output());
    let output = output.map_err(|e| TtsError::Engine(format!("espeak-ng failed: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(TtsError::Engine(format!("espeak-ng exited with {}: {}", output.status, stderr.trim())));
    }
    written.map_err(|e| TtsError::Engine(format!("cannot write to espeak-ng: {e}")))?;
    Ok(output.stdout)
}

/// Cut `text` into pieces of at most `max_chars` characters at spaces (a word longer than that is
/// cut where it must). Pieces are trimmed; empty pieces are dropped.
pub(crate) fn split_pieces(text: &str, max_chars: usize) -> Vec<&str> {
    let max_chars = max_chars.max(1);
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if rest.chars().count() <= max_chars {
            pieces.push(rest);
            break;
        }
        // Byte offset just past `max_chars` characters.
        let limit = rest.char_indices().nth(max_chars).map_or(rest.len(), |(i, _)| i);
        // A space right at the limit still counts.
        let window_end = limit + rest[limit..].chars().next().map_or(0, char::len_utf8);
        let cut = match rest[..window_end].rfind(char::is_whitespace) {
            Some(space) if space > 0 => space,
            _ => limit,
        };
        pieces.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// Samples in one frame of [`FRAME_MS`] at `rate_hz`.
pub(crate) fn frame_len(rate_hz: u32) -> usize {
    (u64::from(rate_hz) * u64::from(FRAME_MS) / 1000).max(1) as usize
}

/// Send `samples` on `audio` in frames of [`FRAME_MS`] (the last one may be shorter). Returns
/// false when the receiver has gone away.
pub(crate) async fn send_frames(samples: &[i16], rate_hz: u32, audio: &mpsc::Sender<Vec<i16>>) -> bool {
    for frame in samples.chunks(frame_len(rate_hz)) {
        if audio.send(frame.to_vec()).await.is_err() {
            return false;
        }
    }
    true
}

/// Parse the WAV espeak-ng writes on stdout. It streams, so its RIFF and data sizes are
/// placeholders (0x7fff_f000); they are set to what was really written before `hound` reads it.
fn parse_wav(mut bytes: Vec<u8>) -> Result<(u32, Vec<i16>), TtsError> {
    let bad = |why: &str| TtsError::Engine(format!("espeak-ng wrote an unexpected WAV ({why})"));
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("no RIFF/WAVE header"));
    }
    let riff_len = u32::try_from(bytes.len() - 8).map_err(|_| bad("too long"))?;
    bytes[4..8].copy_from_slice(&riff_len.to_le_bytes());
    // Walk the chunks to the data chunk and fix its length.
    let mut at = 12;
    loop {
        if at + 8 > bytes.len() {
            return Err(bad("no data chunk"));
        }
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]) as usize;
        if &bytes[at..at + 4] == b"data" {
            let available = bytes.len() - (at + 8);
            let data_len = (available - available % 2) as u32;
            bytes[at + 4..at + 8].copy_from_slice(&data_len.to_le_bytes());
            bytes.truncate(at + 8 + data_len as usize);
            break;
        }
        at += 8 + len + len % 2;
    }
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| bad(&e.to_string()))?;
    let spec = reader.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        return Err(bad(&format!("{spec:?}, expected mono PCM16")));
    }
    let samples = reader.into_samples::<i16>().collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e.to_string()))?;
    Ok((spec.sample_rate, samples))
}

impl TextToSpeech for EspeakTts {
    fn name(&self) -> &str {
        "espeak-ng"
    }

    fn rate_hz(&self) -> u32 {
        ESPEAK_RATE_HZ
    }

    /// `voice`: `None`, `"espeak-ng"` or any other name speaks with the voice given to
    /// [`EspeakTts::new`]. Unknown names are not an error for now (and are never passed to the
    /// program).
    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        let engine = self.clone();
        Box::pin(async move {
            if let Some(voice) = voice.filter(|v| v != "espeak-ng" && *v != engine.voice) {
                tracing::debug!(voice, default = engine.voice, "unknown espeak-ng voice; speaking with the default");
            }
            for piece in split_pieces(&text, PIECE_CHARS_MAX) {
                let wav = run_program(&engine.program, &["--stdout", "-v", &engine.voice, "--stdin"], piece).await?;
                let (rate_hz, samples) = parse_wav(wav)?;
                if rate_hz != ESPEAK_RATE_HZ {
                    return Err(TtsError::Engine(format!("espeak-ng spoke at {rate_hz} Hz, expected {ESPEAK_RATE_HZ}")));
                }
                if !send_frames(&samples, ESPEAK_RATE_HZ, &audio).await {
                    return Ok(());
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_cut_at_spaces() {
        assert_eq!(split_pieces("  ", 10), Vec::<&str>::new());
        assert_eq!(split_pieces(" hello world ", 400), ["hello world"]);
        assert_eq!(split_pieces("aaa bbb ccc ddd", 7), ["aaa bbb", "ccc ddd"]);
        assert_eq!(split_pieces("aaa bbb ccc ddd", 8), ["aaa bbb", "ccc ddd"]);
        assert_eq!(split_pieces("abcdefghij kl", 4), ["abcd", "efgh", "ij", "kl"]);
        // Characters, not bytes.
        assert_eq!(split_pieces("ééé ééé", 3), ["ééé", "ééé"]);
        let long = "word ".repeat(200);
        let pieces = split_pieces(&long, PIECE_CHARS_MAX);
        assert!(pieces.iter().all(|p| p.chars().count() <= PIECE_CHARS_MAX && !p.ends_with(' ')));
        assert_eq!(pieces.iter().map(|p| p.replace(' ', "").len()).sum::<usize>(), 800);
        assert_eq!(pieces.len(), 3);
    }

    #[test]
    fn frames_are_20_ms() {
        assert_eq!(frame_len(22_050), 441);
        assert_eq!(frame_len(16_000), 320);
    }

    #[test]
    fn a_missing_program_says_what_to_install() {
        let err = EspeakTts::with_program(PathBuf::from("/nonexistent/espeak-ng"), "en-us").unwrap_err();
        assert_eq!(err.kind(), "unavailable");
        let msg = err.to_string();
        assert!(msg.contains("Debian package `espeak-ng`") && msg.contains("/nonexistent/espeak-ng"), "{msg}");
        assert!(EspeakTts::new("--evil").is_err());
        assert!(EspeakTts::new("").is_err());
    }

    #[tokio::test]
    async fn espeak_speaks_in_20_ms_frames() {
        let tts = EspeakTts::new("en-us").expect("espeak-ng must be installed for this test (apt-get install espeak-ng)");
        assert_eq!((tts.name(), tts.rate_hz()), ("espeak-ng", 22_050));
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(tts.synthesize("Hello there, how are you today?".into(), Some("nobody".into()), tx));
        let mut frames = Vec::new();
        while let Some(frame) = rx.recv().await {
            frames.push(frame);
        }
        task.await.unwrap().unwrap();
        let samples: Vec<i16> = frames.concat();
        let seconds = samples.len() as f64 / 22_050.0;
        assert!((0.8..5.0).contains(&seconds), "{seconds} s");
        assert!(frames[..frames.len() - 1].iter().all(|f| f.len() == 441));
        let rms = (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
        assert!(rms > 300.0, "rms {rms}");

        let (tx, mut rx) = mpsc::channel(4);
        tts.synthesize(" \n ".into(), None, tx).await.unwrap();
        assert!(rx.recv().await.is_none());
    }
}
