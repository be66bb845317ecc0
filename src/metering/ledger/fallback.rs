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
    /// not parse are logged and counted.
    pub(super) fn read(&self) -> std::io::Result<Option<FallbackLines>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut found = FallbackLines { lines: Vec::new(), unreadable: 0 };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<FallbackLine>(line) {
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
