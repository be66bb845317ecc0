//! The WAV fixtures in `fixtures/audio/` are what the voice pipeline expects (16 kHz mono PCM16),
//! each has a sidecar transcript that loads, and the energy VAD finds one turn per scripted
//! utterance, where the words are.

use std::path::{Path, PathBuf};

use voxgate::stt::fake::Sidecar;
use voxgate::stt::vad::{EnergyVad, VadEvent, VadSettings};
use voxgate::stt::STT_RATE_HZ;

/// How far the VAD's speech onset may sit from the first word's start. The sidecar marks where a word
/// rises above about -50 dBFS, the VAD where 10 ms frames rise above -35 dBFS: a breathy onset ("Hi")
/// is about 50 ms late.
const ONSET_TOLERANCE_MS: u64 = 60;
/// Likewise for the end of speech: word ends fade (the "v" of "five", the vowel of "Sunday"), and the
/// VAD ends speech up to about 90 ms before the sidecar does.
const END_TOLERANCE_MS: u64 = 120;

fn wavs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio");
    let mut wavs: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "wav")).collect();
    wavs.sort();
    wavs
}

fn read(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let samples = reader.samples::<i16>().collect::<Result<Vec<_>, _>>().unwrap();
    (spec, samples)
}

#[test]
fn there_are_twelve_fixtures_under_three_megabytes() {
    let wavs = wavs();
    assert_eq!(wavs.len(), 12, "{wavs:?}");
    let bytes: u64 = wavs.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(bytes < 3_000_000, "{bytes} bytes of WAV");
}

#[test]
fn every_wav_is_16_khz_mono_pcm16_with_a_sidecar_whose_words_fit() {
    for wav in wavs() {
        let name = wav.display();
        let (spec, samples) = read(&wav);
        assert_eq!(spec.sample_rate, STT_RATE_HZ, "{name}");
        assert_eq!(spec.channels, 1, "{name}");
        assert_eq!(spec.bits_per_sample, 16, "{name}");
        assert_eq!(spec.sample_format, hound::SampleFormat::Int, "{name}");
        let duration_ms = samples.len() as u64 * 1000 / u64::from(STT_RATE_HZ);
        assert!((2_000..=8_000).contains(&duration_ms), "{name}: {duration_ms} ms");

        let sidecar = Sidecar::load(&wav.with_extension("json")).unwrap();
        let mut previous_end_ms = 0;
        for utterance in &sidecar.utterances {
            assert!(utterance.error.is_none(), "{name}");
            assert!(!utterance.words.is_empty(), "{name}: {:?}", utterance.text);
            // The words are the transcript's, in order, without punctuation.
            let spoken: Vec<String> =
                utterance.text.split_whitespace().map(|w| w.trim_end_matches(['.', ',', '?', '!']).to_owned()).collect();
            let words: Vec<&str> = utterance.words.iter().map(|w| w.text.as_str()).collect();
            assert_eq!(words, spoken, "{name}");
            for word in &utterance.words {
                assert!(previous_end_ms <= word.start_ms && word.start_ms < word.end_ms, "{name}: {word:?}");
                assert!(word.end_ms <= duration_ms, "{name}: {word:?} after the end ({duration_ms} ms)");
                previous_end_ms = word.end_ms;
            }
        }
    }
}

#[test]
fn the_vad_finds_one_turn_per_utterance_where_the_words_are() {
    let settings = VadSettings::default();
    let mut speech_files = 0;
    for wav in wavs() {
        let name = wav.display();
        let (_, samples) = read(&wav);
        let sidecar = Sidecar::load(&wav.with_extension("json")).unwrap();
        let mut vad = EnergyVad::new(settings, STT_RATE_HZ);
        let mut events = Vec::new();
        // 20 ms pushes, as a transport delivers them.
        for chunk in samples.chunks(320) {
            let mut pushed = Vec::new();
            vad.push(chunk, &mut pushed);
            events.extend(pushed.into_iter().map(|(_, e)| e));
        }
        assert!(!vad.is_speaking(), "{name}: still speaking at the end: {events:?}");
        assert_eq!(events.len(), 2 * sidecar.utterances.len(), "{name}: {events:?}");
        for (utterance, turn) in sidecar.utterances.iter().zip(events.chunks(2)) {
            let first = &utterance.words[0];
            let last = &utterance.words[utterance.words.len() - 1];
            let [VadEvent::SpeechStarted { audio_start_ms }, VadEvent::SpeechStopped { audio_end_ms }] = *turn else {
                panic!("{name}: {events:?}")
            };
            let onset_ms = audio_start_ms + u64::from(settings.prefix_padding_ms);
            assert!(onset_ms.abs_diff(first.start_ms) <= ONSET_TOLERANCE_MS, "{name}: speech from {onset_ms} ms, first word {first:?}");
            assert!(audio_end_ms.abs_diff(last.end_ms) <= END_TOLERANCE_MS, "{name}: speech until {audio_end_ms} ms, last word {last:?}");
        }
        speech_files += usize::from(!sidecar.utterances.is_empty());
    }
    assert_eq!(speech_files, 11, "every fixture but the silent one has speech");
}

/// The session's path in small: the VAD cuts `two_speakers` into turns, each turn's audio goes to the
/// fake STT scripted by the sidecar, and the transcripts come back with the speakers and the words.
#[tokio::test(start_paused = true)]
async fn vad_turns_through_the_fake_stt_give_the_sidecar_transcripts() {
    use voxgate::stt::fake::FakeStt;
    use voxgate::stt::{SpeechToText, Utterance};

    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/two_speakers.wav");
    let sidecar_path = wav.with_extension("json");
    let sidecar = Sidecar::load(&sidecar_path).unwrap();
    let stt = FakeStt::from_sidecars(&[sidecar_path], 0).unwrap();
    let (_, samples) = read(&wav);

    let mut vad = EnergyVad::new(VadSettings::default(), STT_RATE_HZ);
    let mut events = Vec::new();
    vad.push(&samples, &mut events);
    let ms_to_sample = |ms: u64| (ms * u64::from(STT_RATE_HZ) / 1000) as usize;
    let mut transcripts = Vec::new();
    for (ordinal, turn) in events.chunks(2).enumerate() {
        let [(_, VadEvent::SpeechStarted { audio_start_ms }), (stopped_at, VadEvent::SpeechStopped { .. })] = *turn else {
            panic!("{events:?}")
        };
        let (audio, audio_rx) = tokio::sync::mpsc::channel(1_000);
        let (partials, _partials_rx) = tokio::sync::mpsc::channel(16);
        let result = tokio::spawn(
            stt.transcribe(Utterance { start_ms: audio_start_ms, ordinal: ordinal as u32, audio: audio_rx, pause: None }, partials),
        );
        for frame in samples[ms_to_sample(audio_start_ms)..stopped_at].chunks(320) {
            audio.send(frame.to_vec()).await.unwrap();
        }
        drop(audio);
        transcripts.push((audio_start_ms, result.await.unwrap().unwrap()));
    }
    assert_eq!(transcripts.len(), 2);
    for ((audio_start_ms, transcript), scripted) in transcripts.iter().zip(&sidecar.utterances) {
        assert_eq!(transcript.text, scripted.text);
        assert_eq!(transcript.speaker, scripted.speaker);
        assert_eq!(transcript.words.len(), scripted.words.len());
        // The fake re-bases the words so the first starts where the turn starts (padding included).
        assert_eq!(transcript.words[0].start_ms, *audio_start_ms);
        assert!((transcript.confidence - 1.0).abs() < 1e-6);
    }
    assert_eq!(transcripts[0].1.speaker.as_deref(), Some("A"));
    assert_eq!(transcripts[1].1.speaker.as_deref(), Some("B"));
}
