//! The embedded voice: Piper `en_US-joe-medium` (a VITS model in ONNX) run in process through
//! onnxruntime, which is loaded at run time from the models folder (`voxgate models fetch`
//! installs both). Natural speech, a 17-word sentence in about 0.15 s on two cores.
//!
//! # How text becomes audio
//! 1. Text is cut at spaces into pieces of at most [`PIECE_CHARS_MAX`] characters.
//! 2. Each piece goes to the `espeak-ng` program (`-q --ipa -v en-us --stdin`: IPA phonemes, one
//!    line per clause, the same string as espeak-ng's `espeak_TextToPhonemes`, which Piper uses).
//!    espeak-ng is GPL-3.0, so it runs as a separate process and is never linked. The program does
//!    not print the punctuation that ended each clause, so the text is also cut into clauses here
//!    ([`split_clauses`]); when espeak-ng found as many clauses, line `k` belongs to clause `k`,
//!    otherwise every clause is phonemised on its own. Clauses are joined as Piper joins them
//!    (`,` `:` `;` plus a space; `.` `?` `!` end a sentence) and each sentence is synthesised alone.
//! 3. A sentence's phonemes become ids through the voice JSON's `phoneme_id_map`
//!    ([`PhonemeIds::ids`]): start `^`, pad `_`, then each phoneme followed by the pad, then end `$`.
//! 4. The model (`input`, `input_lengths`, `scales`) gives float audio at the JSON's sample rate,
//!    clipped to PCM16 and sent in frames of 20 ms as soon as the sentence is done.
//!
//! # Where it runs
//! Inference never runs on the async runtime: a pool of `workers` OS threads, each with its own
//! onnxruntime session, takes sentences from a bounded queue. A `synthesize` future waits
//! (asynchronously) for a queue slot; dropping it abandons its queued sentence, and the espeak-ng
//! process is killed. A sentence already running finishes (about 0.1 s) and is discarded.
//!
//! # Voices
//! There is one voice. `voice` `None`, this engine's name or any other name speaks with it; an
//! unknown name is not an error for now.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::espeak::{check_program, run_program, send_frames, split_pieces, ESPEAK_PROGRAM, PIECE_CHARS_MAX};
use super::{BoxFuture, TextToSpeech, TtsError};

/// The engine name, for logs and as a voice name.
pub const NAME: &str = "piper-en-us-joe-medium";

/// The espeak-ng arguments that print Piper's phonemes for `voice`, reading the text from stdin.
pub fn espeak_phoneme_args(voice: &str) -> [&str; 5] {
    ["-q", "--ipa", "-v", voice, "--stdin"]
}

/// The Piper engine. See the module doc.
#[derive(Clone)]
pub struct PiperTts {
    inner: Arc<Inner>,
}

struct Inner {
    voice: Voice,
    espeak: PathBuf,
    pool: Pool<Session>,
}

/// What the voice JSON says.
#[derive(Debug)]
struct Voice {
    rate_hz: u32,
    espeak_voice: String,
    ids: PhonemeIds,
    /// noise, length, noise_w.
    scales: [f32; 3],
}

impl PiperTts {
    /// Load the voice `voice_path` (its `.onnx.json` beside it) on the onnxruntime library
    /// `onnxruntime_path`, with `workers` inference threads (at least 1), each with its own
    /// session. Blocking (it reads the model once per worker): call it outside the async runtime
    /// or in `spawn_blocking`.
    pub fn load(voice_path: &Path, onnxruntime_path: &Path, workers: usize) -> Result<PiperTts, TtsError> {
        let workers = workers.max(1);
        let config_path = voice_config_path(voice_path);
        for (what, path) in [("Piper voice", voice_path), ("Piper voice config", &config_path), ("onnxruntime library", onnxruntime_path)] {
            require_file(what, path)?;
        }
        // Each file the lock list pins must still be that file (size and SHA-256) before it is
        // read or dlopen()ed.
        for path in [voice_path, &config_path, onnxruntime_path] {
            crate::models::check_pinned(path).map_err(|e| TtsError::Unavailable(e.to_string()))?;
        }
        let voice = Voice::read(&config_path)?;
        let espeak = PathBuf::from(ESPEAK_PROGRAM);
        check_program(&espeak)?;
        let environment = environment(onnxruntime_path)?;
        // Share the cores between the workers; onnxruntime's own thread pool per session.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let intra_threads = (cores / workers).max(1);
        let sessions = (0..workers).map(|_| open_session(&environment, voice_path, intra_threads)).collect::<Result<Vec<_>, _>>()?;
        let pool = Pool::start("piper", sessions, workers)?;
        tracing::info!(voice = %voice_path.display(), workers, intra_threads, rate_hz = voice.rate_hz, "Piper voice loaded");
        Ok(PiperTts { inner: Arc::new(Inner { voice, espeak, pool }) })
    }
}

/// `en_US-joe-medium.onnx` → `en_US-joe-medium.onnx.json`.
fn voice_config_path(voice_path: &Path) -> PathBuf {
    let mut name = voice_path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn require_file(what: &str, path: &Path) -> Result<(), TtsError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        _ => {
            Err(TtsError::Unavailable(format!("the {what} file {} is missing; run `voxgate models fetch` to download it", path.display())))
        }
    }
}

/// onnxruntime allows one environment per process and one library: the first load decides.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

fn environment(library: &Path) -> Result<Environment, TtsError> {
    let library = std::path::absolute(library).unwrap_or_else(|_| library.to_path_buf());
    let mut current = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((loaded, environment)) = current.as_ref() {
        if *loaded != library {
            tracing::warn!(loaded = %loaded.display(), requested = %library.display(), "onnxruntime is already loaded; keeping the first library");
        }
        return Ok(environment.clone());
    }
    let unavailable = |e: &dyn std::fmt::Display| {
        TtsError::Unavailable(format!(
            "cannot load onnxruntime from {}: {e}; run `voxgate models fetch` (or `voxgate models verify`) to install it",
            library.display()
        ))
    };
    let environment = ort::init_from(&library).map_err(|e| unavailable(&e))?.with_name("voxgate").build().map_err(|e| unavailable(&e))?;
    *current = Some((library, environment.clone()));
    Ok(environment)
}

fn open_session(environment: &Environment, voice_path: &Path, intra_threads: usize) -> Result<Session, TtsError> {
    let failed = |e: &dyn std::fmt::Display| {
        TtsError::Unavailable(format!(
            "cannot load the Piper voice {}: {e}; run `voxgate models verify` and `voxgate models fetch`",
            voice_path.display()
        ))
    };
    Session::builder(environment)
        .map_err(|e| failed(&e))?
        .with_intra_threads(intra_threads)
        .map_err(|e| failed(&e))?
        // onnxruntime's threads spin between runs by default, taking the cores the speech
        // recogniser and the language model need in the same turn; wait on the OS instead.
        .with_intra_op_spinning(false)
        .map_err(|e| failed(&e))?
        .commit_from_file(voice_path)
        .map_err(|e| failed(&e))
}

/// The parts of a Piper voice JSON we use (other fields are ignored).
#[derive(Deserialize)]
struct VoiceJson {
    audio: AudioJson,
    #[serde(default)]
    espeak: Option<EspeakJson>,
    #[serde(default)]
    inference: InferenceJson,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(Deserialize)]
struct AudioJson {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct EspeakJson {
    voice: String,
}

#[derive(Deserialize)]
#[serde(default)]
struct InferenceJson {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceJson {
    fn default() -> Self {
        InferenceJson { noise_scale: 0.667, length_scale: 1.0, noise_w: 0.8 }
    }
}

impl Voice {
    fn read(path: &Path) -> Result<Voice, TtsError> {
        let invalid = |why: String| {
            TtsError::Unavailable(format!(
                "the Piper voice config {} is invalid ({why}); run `voxgate models verify` and `voxgate models fetch`",
                path.display()
            ))
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        Voice::parse(&text).map_err(invalid)
    }

    fn parse(text: &str) -> Result<Voice, String> {
        let json: VoiceJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if !(8_000..=192_000).contains(&json.audio.sample_rate) {
            return Err(format!("sample rate {} Hz", json.audio.sample_rate));
        }
        let espeak_voice = json.espeak.map_or_else(|| "en-us".to_owned(), |e| e.voice);
        if espeak_voice.is_empty()
            || espeak_voice.starts_with('-')
            || !espeak_voice.chars().all(|c| c.is_ascii_alphanumeric() || "-_+/".contains(c))
        {
            return Err(format!("espeak voice {espeak_voice:?}"));
        }
        let i = json.inference;
        Ok(Voice {
            rate_hz: json.audio.sample_rate,
            espeak_voice,
            ids: PhonemeIds::new(json.phoneme_id_map)?,
            scales: [i.noise_scale, i.length_scale, i.noise_w],
        })
    }
}

/// A voice's `phoneme_id_map`, with its start, end and pad entries.
#[derive(Debug, Clone)]
pub struct PhonemeIds {
    map: HashMap<String, Vec<i64>>,
    /// The longest key, in characters (keys may be more than one codepoint).
    longest_chars: usize,
    start: Vec<i64>,
    end: Vec<i64>,
    pad: Vec<i64>,
}

impl PhonemeIds {
    /// The map must have `^` (start), `$` (end) and `_` (pad).
    pub fn new(map: HashMap<String, Vec<i64>>) -> Result<PhonemeIds, String> {
        let entry = |key: &str| map.get(key).cloned().ok_or_else(|| format!("phoneme_id_map has no {key:?}"));
        let (start, end, pad) = (entry("^")?, entry("$")?, entry("_")?);
        let longest_chars = map.keys().map(|k| k.chars().count()).max().unwrap_or(1);
        Ok(PhonemeIds { map, longest_chars, start, end, pad })
    }

    /// The ids for one sentence of phonemes, as Piper makes them: start, pad, then every phoneme
    /// followed by pad, then end. Phonemes are matched longest key first, after splitting the
    /// precomposed letters Piper decomposes (Unicode NFD, e.g. `ç` → `c` + U+0327). Characters the
    /// map lacks are skipped, as Piper skips them.
    pub fn ids(&self, phonemes: &str) -> Vec<i64> {
        let chars: Vec<char> = phonemes.chars().flat_map(decompose).collect();
        let mut ids = Vec::with_capacity(2 * chars.len() + 3);
        ids.extend(&self.start);
        ids.extend(&self.pad);
        let mut at = 0;
        let mut key = String::new();
        while at < chars.len() {
            let longest = self.longest_chars.min(chars.len() - at);
            let found = (1..=longest).rev().find_map(|len| {
                key.clear();
                key.extend(&chars[at..at + len]);
                self.map.get(&key).map(|found| (len, found))
            });
            match found {
                Some((len, found)) => {
                    ids.extend(found);
                    ids.extend(&self.pad);
                    at += len;
                }
                None => {
                    tracing::trace!(phoneme = %chars[at], "phoneme not in the voice's map; skipped");
                    at += 1;
                }
            }
        }
        ids.extend(&self.end);
        ids
    }
}

/// Unicode NFD for the precomposed letters espeak-ng's IPA can hold (Piper decomposes its
/// phonemes with NFD before mapping them). Everything else is already decomposed.
fn decompose(c: char) -> impl Iterator<Item = char> {
    let pair = match c {
        'ç' => Some(('c', '\u{327}')),
        'ã' => Some(('a', '\u{303}')),
        'õ' => Some(('o', '\u{303}')),
        'ẽ' => Some(('e', '\u{303}')),
        'ĩ' => Some(('i', '\u{303}')),
        'ũ' => Some(('u', '\u{303}')),
        _ => None,
    };
    match pair {
        Some((a, b)) => [Some(a), Some(b)].into_iter().flatten(),
        None => [Some(c), None].into_iter().flatten(),
    }
}

/// What ended a clause: the punctuation Piper writes into the phonemes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminator {
    Period,
    Question,
    Exclamation,
    Comma,
    Colon,
    Semicolon,
    /// The end of the text without punctuation (Piper adds nothing).
    End,
}

impl Terminator {
    /// What Piper appends to the clause's phonemes.
    pub fn suffix(self) -> &'static str {
        match self {
            Terminator::Period => ".",
            Terminator::Question => "?",
            Terminator::Exclamation => "!",
            Terminator::Comma => ", ",
            Terminator::Colon => ": ",
            Terminator::Semicolon => "; ",
            Terminator::End => "",
        }
    }

    /// Whether a sentence ends here (Piper synthesises sentence by sentence).
    pub fn ends_sentence(self) -> bool {
        matches!(self, Terminator::Period | Terminator::Question | Terminator::Exclamation | Terminator::End)
    }
}

/// Cut `text` into clauses where espeak-ng does for English: after `.` `?` `!` `,` `:` `;` (a run
/// of them, then any closing quotes or brackets) followed by whitespace or the end; a `.` before
/// a lower-case word is an abbreviation, not a clause end (`a.m. on`). Each clause keeps its
/// punctuation; a last clause without it ends with [`Terminator::End`].
pub fn split_clauses(text: &str) -> Vec<(&str, Terminator)> {
    const PUNCT: &str = ".?!,:;";
    const CLOSERS: &str = "\"')]}”’»";
    let mut clauses = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if !PUNCT.contains(c) {
            continue;
        }
        let mut run = vec![c];
        let mut end = at + c.len_utf8();
        while let Some(&(i, next)) = chars.peek() {
            if PUNCT.contains(next) || CLOSERS.contains(next) {
                if PUNCT.contains(next) {
                    run.push(next);
                }
                end = i + next.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let after = &text[end..];
        if !(after.is_empty() || after.starts_with(char::is_whitespace)) {
            continue;
        }
        let next_word = after.trim_start().chars().next();
        if run.iter().all(|&p| p == '.') && next_word.is_some_and(char::is_lowercase) {
            continue;
        }
        let terminator = if run.contains(&'?') {
            Terminator::Question
        } else if run.contains(&'!') {
            Terminator::Exclamation
        } else {
            match run[0] {
                '.' => Terminator::Period,
                ',' => Terminator::Comma,
                ':' => Terminator::Colon,
                _ => Terminator::Semicolon,
            }
        };
        let clause = text[start..end].trim();
        if !clause.is_empty() {
            clauses.push((clause, terminator));
        }
        start = end;
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        clauses.push((rest, Terminator::End));
    }
    clauses
}

/// Join phonemised clauses into sentences as Piper does: each clause's phonemes plus its
/// terminator's suffix; a sentence ends at `.` `?` `!` or the end. Sentences with no phonemes
/// (punctuation only) are dropped.
pub fn join_sentences(clauses: &[(String, Terminator)]) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    for (phonemes, terminator) in clauses {
        current.push_str(phonemes.trim());
        current.push_str(terminator.suffix());
        if terminator.ends_sentence() {
            sentences.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        sentences.push(current);
    }
    sentences.retain(|s| s.chars().any(char::is_alphabetic));
    sentences
}

/// The phoneme sentences of one piece of text, from espeak-ng (see the module doc).
async fn phonemize(program: &Path, voice: &str, text: &str) -> Result<Vec<String>, TtsError> {
    let clauses = split_clauses(text);
    if clauses.is_empty() {
        return Ok(Vec::new());
    }
    let lines = |out: Vec<u8>| -> Vec<String> {
        String::from_utf8_lossy(&out).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    };
    let args = espeak_phoneme_args(voice);
    let whole = lines(run_program(program, &args, text).await?);
    let phonemes: Vec<String> = if whole.len() == clauses.len() {
        whole
    } else {
        // espeak-ng cut the text differently: ask clause by clause (in parallel).
        let runs = clauses.iter().map(|(clause, _)| run_program(program, &args, clause));
        futures::future::try_join_all(runs).await?.into_iter().map(|out| lines(out).join(" ")).collect()
    };
    let tagged: Vec<(String, Terminator)> = phonemes.into_iter().zip(clauses.iter().map(|&(_, t)| t)).collect();
    Ok(join_sentences(&tagged))
}

/// Run the model on one sentence's ids; PCM16 out.
fn infer(session: &mut Session, ids: Vec<i64>, scales: [f32; 3]) -> Result<Vec<i16>, TtsError> {
    let failed = |e: ort::Error| TtsError::Engine(format!("Piper inference failed: {e}"));
    let len = ids.len();
    let input = Tensor::from_array(([1usize, len], ids)).map_err(failed)?;
    let lengths = Tensor::from_array(([1usize], vec![len as i64])).map_err(failed)?;
    let scales = Tensor::from_array(([3usize], scales.to_vec())).map_err(failed)?;
    let outputs = session.run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales]).map_err(failed)?;
    let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(failed)?;
    Ok(audio.iter().map(|&x| to_pcm16(x)).collect())
}

/// Float audio in [-1, 1] to PCM16, clipping what is outside.
fn to_pcm16(x: f32) -> i16 {
    if x.is_nan() {
        return 0;
    }
    (x.clamp(-1.0, 1.0) * 32_767.0).round() as i16
}

impl TextToSpeech for PiperTts {
    fn name(&self) -> &str {
        NAME
    }

    fn rate_hz(&self) -> u32 {
        self.inner.voice.rate_hz
    }

    fn synthesize(&self, text: String, voice: Option<String>, audio: mpsc::Sender<Vec<i16>>) -> BoxFuture<Result<(), TtsError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some(voice) = voice.filter(|v| v != NAME) {
                tracing::debug!(voice, "unknown Piper voice; speaking with {NAME}");
            }
            let rate_hz = inner.voice.rate_hz;
            for piece in split_pieces(&text, PIECE_CHARS_MAX) {
                for sentence in phonemize(&inner.espeak, &inner.voice.espeak_voice, piece).await? {
                    if audio.is_closed() {
                        return Ok(());
                    }
                    let ids = inner.voice.ids.ids(&sentence);
                    let scales = inner.voice.scales;
                    let samples = inner.pool.run(move |session| infer(session, ids, scales)).await??;
                    if !send_frames(&samples, rate_hz, &audio).await {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }
}

/// A job for one worker's state.
type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A fixed set of OS threads, each owning one `S` (an onnxruntime session), taking jobs from a
/// bounded queue. At most `threads + queued_max` jobs are in the pool; [`Pool::run`] waits
/// asynchronously for a slot beyond that.
struct Pool<S> {
    jobs: std::sync::mpsc::SyncSender<Job<S>>,
    slots: Arc<Semaphore>,
}

impl<S: Send + 'static> Pool<S> {
    /// One thread per state. The threads end when the pool is dropped.
    fn start(name: &str, states: Vec<S>, queued_max: usize) -> Result<Pool<S>, TtsError> {
        let capacity = states.len() + queued_max;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job<S>>(capacity);
        let queue = Arc::new(Mutex::new(queue));
        for (k, mut state) in states.into_iter().enumerate() {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{k}"))
                .spawn(move || loop {
                    let job = match queue.lock().unwrap_or_else(PoisonError::into_inner).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    // A panicking job loses its reply (the caller sees an error); the thread lives on.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut state)));
                })
                .map_err(|e| TtsError::Unavailable(format!("cannot start a {name} thread: {e}")))?;
        }
        Ok(Pool { jobs, slots: Arc::new(Semaphore::new(capacity)) })
    }

    /// Run `work` on a worker and wait for its result. A slot is held from queueing until the
    /// job ends; dropping this future while the job is queued means it never runs.
    async fn run<R: Send + 'static>(&self, work: impl FnOnce(&mut S) -> R + Send + 'static) -> Result<R, TtsError> {
        let stopped = || TtsError::Engine("the text-to-speech worker pool has stopped".into());
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| stopped())?;
        let (reply, result) = oneshot::channel();
        let job: Job<S> = Box::new(move |state| {
            if reply.is_closed() {
                return; // abandoned while queued (the slot is freed with the job)
            }
            let result = work(state);
            // Free the slot before replying, so a caller that got its result sees it free.
            drop(slot);
            let _ = reply.send(result);
        });
        // Never full: every queued job holds one of `capacity` slots.
        self.jobs.try_send(job).map_err(|_| stopped())?;
        result.await.map_err(|_| TtsError::Engine("a text-to-speech worker failed (panicked)".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn small_map() -> PhonemeIds {
        let map: HashMap<String, Vec<i64>> = [
            ("_", 0),
            ("^", 1),
            ("$", 2),
            (" ", 3),
            (".", 10),
            ("h", 20),
            ("l", 24),
            ("o", 27),
            ("ə", 59),
            ("ˈ", 120),
            ("ʊ", 100),
            ("c", 16),
            ("\u{327}", 140),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), vec![v]))
        .collect();
        PhonemeIds::new(map).unwrap()
    }

    #[test]
    fn a_known_word_maps_to_the_expected_ids() {
        // espeak-ng's "hello." is "həlˈoʊ" plus the period Piper appends.
        let ids = small_map().ids("həlˈoʊ.");
        assert_eq!(ids, [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 10, 0, 2]);
        // Nothing but start, pad and end for no phonemes; unknown characters are skipped.
        assert_eq!(small_map().ids(""), [1, 0, 2]);
        assert_eq!(small_map().ids("hxh"), [1, 0, 20, 0, 20, 0, 2]);
        // Precomposed ç is decomposed as Piper's NFD does.
        assert_eq!(small_map().ids("ç"), [1, 0, 16, 0, 140, 0, 2]);
    }

    #[test]
    fn multi_codepoint_keys_match_longest_first() {
        let mut map = small_map().map;
        map.insert("oʊ".into(), vec![200]);
        map.insert("tʃ".into(), vec![201, 202]);
        map.insert("t".into(), vec![32]);
        let ids = PhonemeIds::new(map).unwrap();
        assert_eq!(ids.ids("hoʊ"), [1, 0, 20, 0, 200, 0, 2]);
        assert_eq!(ids.ids("tʃt"), [1, 0, 201, 202, 0, 32, 0, 2]);
        assert!(PhonemeIds::new(HashMap::new()).unwrap_err().contains("\"^\""));
    }

    #[test]
    fn the_real_voice_config_parses() {
        let json = r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
            "inference":{"noise_scale":0.5,"length_scale":1.2,"noise_w":0.7},
            "phoneme_id_map":{"_":[0],"^":[1],"$":[2]},"other":{}}"#;
        let voice = Voice::parse(json).unwrap();
        assert_eq!((voice.rate_hz, voice.espeak_voice.as_str(), voice.scales), (22_050, "en-us", [0.5, 1.2, 0.7]));
        let defaults = Voice::parse(r#"{"audio":{"sample_rate":16000},"phoneme_id_map":{"_":[0],"^":[1],"$":[2]}}"#).unwrap();
        assert_eq!(defaults.scales, [0.667, 1.0, 0.8]);
        assert!(
            Voice::parse(r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"--x"},"phoneme_id_map":{"_":[0],"^":[1],"$":[2]}}"#).is_err()
        );
        assert_eq!(voice_config_path(Path::new("/m/v.onnx")), Path::new("/m/v.onnx.json"));
    }

    #[test]
    fn clauses_are_cut_where_espeak_cuts_them() {
        use Terminator::*;
        assert_eq!(
            split_clauses("Hello, world. How are you? I'm fine: thanks; really! Dr. Smith paid 3.5 dollars"),
            [
                ("Hello,", Comma),
                ("world.", Period),
                ("How are you?", Question),
                ("I'm fine:", Colon),
                ("thanks;", Semicolon),
                ("really!", Exclamation),
                ("Dr.", Period),
                ("Smith paid 3.5 dollars", End),
            ]
        );
        assert_eq!(split_clauses("at 10:30 a.m. on time."), [("at 10:30 a.m. on time.", Period)]);
        assert_eq!(split_clauses("He said \"no.\" Then?! ok"), [("He said \"no.\"", Period), ("Then?!", Question), ("ok", End)]);
        assert!(split_clauses("  ").is_empty());
    }

    #[test]
    fn sentences_join_clauses_as_piper_does() {
        use Terminator::*;
        let clauses = [("həlˈoʊ", Comma), ("wˈɜːld", Period), ("hˈaʊ ɑːɹ juː", Question), ("ʃˈʊɹ", End), ("", Period)];
        let clauses: Vec<(String, Terminator)> = clauses.iter().map(|&(p, t)| (p.to_owned(), t)).collect();
        assert_eq!(join_sentences(&clauses), ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?", "ʃˈʊɹ"]);
    }

    #[test]
    fn files_changed_since_they_were_installed_are_not_loaded() {
        // The models folder's layout with files that are not the pinned ones (a tampered copy).
        let dir = std::env::temp_dir().join(format!("voxgate-piper-tamper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let voice = crate::models::piper_voice_path(&dir);
        let library = crate::models::onnxruntime_path(&dir);
        for path in [&voice, &voice_config_path(&voice), &library] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"{}").unwrap();
        }
        let Err(TtsError::Unavailable(message)) = PiperTts::load(&voice, &library, 1) else { panic!("a tampered voice loads") };
        let _ = std::fs::remove_dir_all(&dir);
        assert!(message.contains("not the pinned model file") && message.contains("voxgate models fetch"), "{message}");
        assert!(message.contains("en_US-joe-medium.onnx"), "names the file: {message}");
    }

    #[test]
    fn pcm16_is_clipped() {
        assert_eq!(
            [to_pcm16(0.0), to_pcm16(0.5), to_pcm16(1.0), to_pcm16(3.0), to_pcm16(-3.0), to_pcm16(f32::NAN)],
            [0, 16_384, 32_767, 32_767, -32_767, 0]
        );
    }

    /// The real program gives the phonemes Piper expects (same as `espeak_TextToPhonemes`).
    #[tokio::test]
    async fn espeak_gives_piper_phonemes() {
        let sentences = phonemize(Path::new(ESPEAK_PROGRAM), "en-us", "Hello, world. How are you? Sure").await.unwrap();
        assert_eq!(sentences, ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?", "ʃˈʊɹ"]);
        // espeak cuts "2024 —" where we do not: clause-by-clause fallback, same words.
        let sentences = phonemize(Path::new(ESPEAK_PROGRAM), "en-us", "In 2024 — yes.").await.unwrap();
        assert_eq!(sentences.len(), 1, "{sentences:?}");
        assert!(sentences[0].starts_with("ɪn tˈuː θˈaʊzənd") && sentences[0].ends_with("jˈɛs."), "{sentences:?}");
    }

    #[tokio::test]
    async fn the_pool_bounds_concurrency_and_skips_abandoned_jobs() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(Pool::start("test", vec![0usize, 0], 2).unwrap());
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    pool.run(move |done: &mut usize| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        *done += 1;
                        *done
                    })
                    .await
                })
            })
            .collect();
        let mut per_worker = Vec::new();
        for task in tasks {
            per_worker.push(task.await.unwrap().unwrap());
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2, "two workers, never more at once");
        assert_eq!(per_worker.len(), 12);
        // Every slot is free again.
        assert_eq!(pool.slots.available_permits(), 4);

        // One worker, blocked; a queued job whose caller leaves never runs.
        let pool = Arc::new(Pool::start("test", vec![()], 1).unwrap());
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move |_| blocked.recv().unwrap()).await }
        });
        let ran = Arc::new(AtomicUsize::new(0));
        let second = tokio::spawn({
            let (pool, ran) = (pool.clone(), ran.clone());
            async move { pool.run(move |_| ran.fetch_add(1, Ordering::SeqCst)).await }
        });
        // Both slots taken (one running, one queued): a third caller waits without blocking the runtime.
        while pool.slots.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let third = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|_| 3).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        second.abort();
        let _ = second.await;
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(third.await.unwrap().unwrap(), 3);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the abandoned job must not run");
    }
}
