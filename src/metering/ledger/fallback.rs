//! The fallback file: final records the store could not take, one JSON object a line, each appended
//! and synced at once; read back by the next open, imported once, then removed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RequestRecord, SessionRecord};

/// A final record the ledger could not take yet: one JSON object a line, `{"session": {..}}` or
/// `{"request": {..}}` (externally tagged: an internally tagged enum cannot carry a u128).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum FallbackLine {
    Session(SessionRecord),
    Request(RequestRecord),
}

impl FallbackLine {
    pub(super) fn session_id(&self) -> Option<&str> {
        match self {
            FallbackLine::Session(s) => Some(&s.id),
            FallbackLine::Request(_) => None,
        }
    }
}

/// The fallback file at its path (it exists only while it holds records).
pub(super) struct FallbackFile {
    path: PathBuf,
}

/// What [`FallbackFile::read`] found.
pub(super) struct FallbackLines {
    pub(super) lines: Vec<FallbackLine>,
    /// Lines that did not parse (a write torn by a crash): skipped and logged.
    pub(super) unreadable: usize,
}

impl FallbackFile {
    pub(super) fn new(path: PathBuf) -> FallbackFile {
        FallbackFile { path }
    }

    /// Appends one JSON line and syncs it. A line torn by an earlier crash is ended first, so it
    /// cannot swallow this one.
    pub(super) fn append(&self, line: &FallbackLine) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        let created = !self.path.exists();
        let mut f = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
        let len = f.metadata()?.len();
        if len > 0 {
            let mut last = [0u8];
            f.seek(SeekFrom::Start(len - 1))?;
            f.read_exact(&mut last)?;
            if last[0] != b'\n' {
                text.insert(0, '\n');
            }
        }
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        if created {
            sync_dir(&self.path);
        }
        Ok(())
    }

    /// The file's records, or `None` when there is no file. Blank lines are ignored; lines that do
    /// not parse (invalid UTF-8 included: a crash may tear a line inside a character) are logged
    /// and counted.
    pub(super) fn read(&self) -> std::io::Result<Option<FallbackLines>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut found = FallbackLines { lines: Vec::new(), unreadable: 0 };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()) {
            match serde_json::from_slice::<FallbackLine>(line) {
                Ok(l) => found.lines.push(l),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable line in the ledger's fallback file, skipped");
                    found.unreadable += 1;
                }
            }
        }
        Ok(Some(found))
    }

    /// Removes the file once its records are in the store, durably.
    pub(super) fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)?;
        sync_dir(&self.path);
        Ok(())
    }
}

/// Makes a file's creation or removal durable (best effort: not every platform syncs a directory).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// The fallback file is ours, but it outlives the process that wrote it: a crash tears its last
/// line anywhere (inside a character too), a disk flips bits. Its import must skip what it cannot
/// read, line by line, and never refuse the whole file (the ledger would not open).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::test_rng::Prng;

    const LINES: [&str; 3] = [
        r#"{"session":{"id":"sess_1","key_id":"clé","protocol":"realtime","started_ms":1772409598000,"ended_ms":1772409600000,"checkpoint_ms":1772409600000,"billed_seconds":2,"rate_microusd_per_hour":4500000,"amount":9000000,"close_reason":"client_closed","input_tokens":10,"output_tokens":5,"cached_tokens":0,"token_cost_picousd":7,"stt_audio_ms":1500,"tts_chars":12,"turns":1,"stt_cost_picousd":3,"tts_cost_picousd":4,"speech":[{"stage":"stt","engine":"dg","quantity":1500,"price_microusd":7700,"cost_picousd":3}]}}"#,
        r#"{"request":{"id":"chatcmpl-1","ts_ms":1772409598000,"key_id":"k€y","model":"echo","outcome":"ok","input_tokens":3,"output_tokens":4,"cached_tokens":0,"cost_picousd":11,"latency_ms":12}}"#,
        r#"{"session":{"id":"sess_2","key_id":"k","protocol":"twilio","started_ms":0,"ended_ms":null,"checkpoint_ms":0,"billed_seconds":0,"rate_microusd_per_hour":0,"amount":0,"close_reason":null,"input_tokens":0,"output_tokens":0,"cached_tokens":0,"token_cost_picousd":0,"stt_audio_ms":0,"tts_chars":0,"turns":0}}"#,
    ];

    fn file(name: &str, bytes: &[u8]) -> FallbackFile {
        let path = std::env::temp_dir().join(format!("voxgate-fallback-fuzz-{name}-{}.jsonl", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        FallbackFile::new(path)
    }

    /// Every line that is not blank is either read or counted as unreadable.
    fn read_all(f: &FallbackFile, bytes: &[u8]) -> FallbackLines {
        let found = f.read().expect("a fallback file with any content is read").expect("the file is there");
        let non_blank = bytes.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count();
        assert!(found.lines.len() + found.unreadable <= non_blank.max(1), "{} + {} of {non_blank}", found.lines.len(), found.unreadable);
        found
    }

    #[test]
    fn samples_are_readable() {
        let text = LINES.join("\n");
        let f = file("samples", text.as_bytes());
        assert_eq!(read_all(&f, text.as_bytes()).lines.len(), 3);
        let _ = f.remove();
    }

    #[test]
    fn a_line_torn_inside_a_character_is_skipped_and_the_others_read() {
        // The first line's key is "clé": cut between the two bytes of "é", then a later line appended.
        let torn = LINES[0].as_bytes();
        let cut = LINES[0].find('é').unwrap() + 1;
        let mut bytes = torn[..cut].to_vec();
        bytes.push(b'\n');
        bytes.extend(LINES[1].as_bytes());
        bytes.push(b'\n');
        let f = file("torn-char", &bytes);
        let found = read_all(&f, &bytes);
        assert_eq!((found.lines.len(), found.unreadable), (1, 1));
        let _ = f.remove();
    }

    #[test]
    fn mutated_files_are_read_line_by_line() {
        let cases = std::env::var("VOXGATE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(500usize);
        let seed = std::env::var("VOXGATE_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0x5eed_f022_0015u64);
        let samples: Vec<&[u8]> = LINES.iter().map(|l| l.as_bytes()).collect();
        let tokens =
            ["\n", "{\"session\":", "{\"request\":", "\"amount\":", "\"speech\":", "null", "340282366920938463463374607431768211456"];
        let f = file("mutated", b"");
        for case in 0..cases {
            let mut rng = Prng((seed ^ (case as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            let mut bytes: Vec<u8> = (0..1 + rng.below(4)).flat_map(|_| [rng.pick(&samples).to_vec(), b"\n".to_vec()].concat()).collect();
            rng.mutate(&mut bytes, &samples, &tokens);
            std::fs::write(&f.path, &bytes).unwrap();
            let read = std::panic::catch_unwind(|| {
                read_all(&f, &bytes);
            });
            assert!(read.is_ok(), "fallback file case {case} (VOXGATE_FUZZ_SEED={seed}): {:?}", String::from_utf8_lossy(&bytes));
        }
        let _ = f.remove();
    }
}
