//! An energy voice-activity detector: decides when the user starts and stops speaking from the RMS
//! level of 10 ms frames. Deterministic: time is counted in samples, never read from a clock, so the
//! same audio gives the same events however it is chunked.
//!
//! # Threshold
//! `threshold` (0.0 to 1.0, like OpenAI's `server_vad`) maps linearly to a frame RMS level in dBFS:
//! `level_dbfs = -60 + 50 × threshold`, so 0.0 is -60 dBFS, 1.0 is -10 dBFS and the default 0.5 is
//! -35 dBFS (an RMS of about 583 in PCM16). A frame is *voiced* when its RMS is at or above that level.
//! espeak-ng speech at its normal level has voiced frames around -15 to -25 dBFS; room noise at
//! -50 dBFS stays well below.
//!
//! # Turns
//! - Speech starts once the voiced frames since an onset add up to `min_speech_ms`. Unvoiced gaps of
//!   up to [`ONSET_GAP_MS`] inside the onset are tolerated (a stop consonant), a longer gap forgets it:
//!   a click or a short echo blip never starts a turn. `audio_start_ms` is the start of the onset's
//!   first voiced frame minus `prefix_padding_ms`, clamped at 0 (it may reach back before the end of
//!   the previous turn).
//! - Speech stops after `silence_duration_ms` of unvoiced frames. `audio_end_ms` is the end of the
//!   last voiced frame: the real end of speech, from which voice-to-voice latency is measured.
//! - With [`EnergyVad::report_pauses`], a turn also reports `SpeechPaused` once its unvoiced run
//!   reaches the pause length (shorter than `silence_duration_ms`), and `SpeechResumed` when a voiced
//!   frame ends that run before the turn stops. A speech-to-text engine can start decoding at the
//!   pause, so the transcript is nearly ready when the silence window closes the turn.

/// The longest unvoiced gap inside an onset that still counts as one onset.
pub const ONSET_GAP_MS: u32 = 40;

/// The pause sessions ask the detector to report (see [`EnergyVad::report_pauses`]): short enough
/// to leave most of the default 500 ms silence window for decoding, long enough that most gaps
/// between words do not reach it. Measured with the embedded engines (`voxgate bench pipeline
/// --embedded`, one session): 100 ms gave first agent audio at 780 ms p50 and the final 0 ms after
/// the commit, 150 ms gave 880 ms and 66 ms; over the fixture turns 100 ms starts 57 early decodes
/// of which 45 are discarded (150 ms: 32 and 20), which costs CPU but no latency.
pub const PAUSE_MS: u32 = 100;

/// Frame length of the detector.
pub const FRAME_MS: u32 = 10;

/// Turn detection settings, with OpenAI `server_vad` defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadSettings {
    /// 0.0 to 1.0: -60 dBFS to -10 dBFS (see the module doc).
    pub threshold: f32,
    /// Audio kept before the first voiced frame.
    pub prefix_padding_ms: u32,
    /// Unvoiced time that ends a turn.
    pub silence_duration_ms: u32,
    /// Voiced time needed to start a turn.
    pub min_speech_ms: u32,
}

impl Default for VadSettings {
    fn default() -> Self {
        VadSettings { threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500, min_speech_ms: 120 }
    }
}

impl VadSettings {
    /// The RMS level in dBFS that `threshold` maps to.
    pub fn level_dbfs(&self) -> f32 {
        -60.0 + 50.0 * self.threshold.clamp(0.0, 1.0)
    }
}

/// A turn boundary. Times count from the first sample the detector was fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    SpeechStarted {
        audio_start_ms: u64,
    },
    SpeechStopped {
        audio_end_ms: u64,
    },
    /// The turn has been unvoiced for the pause length since `audio_end_ms` (only with
    /// [`EnergyVad::report_pauses`]); a `SpeechStopped` with the same `audio_end_ms` follows unless
    /// a `SpeechResumed` comes first.
    SpeechPaused {
        audio_end_ms: u64,
    },
    /// A voiced frame ended a reported pause: the turn goes on.
    SpeechResumed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Silence,
    /// Voiced frames seen, not yet `min_speech_ms` of them.
    Onset {
        start: u64,
        voiced_frames: u32,
        gap_frames: u32,
    },
    /// In a turn; `last_voiced_end` is the sample just after the last voiced frame.
    Speaking {
        last_voiced_end: u64,
        gap_frames: u32,
    },
}

/// An energy VAD over mono PCM16 at a fixed rate. See the module doc.
#[derive(Debug, Clone)]
pub struct EnergyVad {
    rate_hz: u32,
    frame_len: u32,
    /// A frame is voiced when its sum of squares is at least this.
    frame_energy_min: u64,
    onset_frames_min: u32,
    onset_gap_frames_max: u32,
    silence_frames: u32,
    /// Unvoiced frames in a turn that make a reported pause; `None` reports none.
    pause_frames: Option<u32>,
    prefix_padding_ms: u32,
    /// Samples consumed so far.
    position: u64,
    /// Sum of squares and length of the frame being filled.
    partial_energy: u64,
    partial_len: u32,
    state: State,
}

impl EnergyVad {
    pub fn new(settings: VadSettings, rate_hz: u32) -> Self {
        let rate_hz = rate_hz.max(100);
        let frame_len = rate_hz * FRAME_MS / 1000;
        let rms = 32768.0 * 10f64.powf(f64::from(settings.level_dbfs()) / 20.0);
        let frame_energy_min = (rms * rms * f64::from(frame_len)).ceil() as u64;
        let frames = |ms: u32| ms.div_ceil(FRAME_MS);
        EnergyVad {
            rate_hz,
            frame_len,
            frame_energy_min,
            onset_frames_min: frames(settings.min_speech_ms).max(1),
            onset_gap_frames_max: ONSET_GAP_MS / FRAME_MS,
            silence_frames: frames(settings.silence_duration_ms).max(1),
            pause_frames: None,
            prefix_padding_ms: settings.prefix_padding_ms,
            position: 0,
            partial_energy: 0,
            partial_len: 0,
            state: State::Silence,
        }
    }

    /// Feeds samples; appends each event with the index in `samples` at which it was decided: the
    /// number of samples of this call consumed when the deciding frame completed, so
    /// `samples[..index]` came before the event.
    pub fn push(&mut self, samples: &[i16], events: &mut Vec<(usize, VadEvent)>) {
        let mut done = 0;
        while done < samples.len() {
            // Up to the end of the frame being filled: one sum of squares per piece, not a branch per sample.
            let take = ((self.frame_len - self.partial_len) as usize).min(samples.len() - done);
            let piece = &samples[done..done + take];
            self.partial_energy += piece.iter().map(|&s| i64::from(s) * i64::from(s)).sum::<i64>() as u64;
            self.partial_len += take as u32;
            self.position += take as u64;
            done += take;
            if self.partial_len == self.frame_len {
                let voiced = self.partial_energy >= self.frame_energy_min;
                self.partial_energy = 0;
                self.partial_len = 0;
                if let Some(event) = self.on_frame(voiced) {
                    events.push((done, event));
                }
            }
        }
    }

    /// Report `SpeechPaused` after `pause_ms` of unvoiced audio inside a turn, and `SpeechResumed`
    /// when voice comes back before the turn stops. A pause as long as the silence window is no
    /// pause: the turn stops instead.
    pub fn report_pauses(mut self, pause_ms: u32) -> Self {
        let frames = pause_ms.div_ceil(FRAME_MS).max(1);
        self.pause_frames = (frames < self.silence_frames).then_some(frames);
        self
    }

    /// Audio consumed so far, in ms.
    pub fn position_ms(&self) -> u64 {
        self.ms(self.position)
    }

    pub fn is_speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Back to silence; the position (and the frame being filled) is kept.
    pub fn reset(&mut self) {
        self.state = State::Silence;
    }

    fn ms(&self, samples: u64) -> u64 {
        samples * 1000 / u64::from(self.rate_hz)
    }

    /// Steps the state machine by one frame that ended at `self.position`.
    fn on_frame(&mut self, voiced: bool) -> Option<VadEvent> {
        let frame_end = self.position;
        let frame_start = frame_end - u64::from(self.frame_len);
        match (self.state, voiced) {
            (State::Silence, false) => None,
            (State::Silence, true) => {
                self.state = State::Onset { start: frame_start, voiced_frames: 0, gap_frames: 0 };
                self.on_frame(true)
            }
            (State::Onset { start, voiced_frames, .. }, true) => {
                let voiced_frames = voiced_frames + 1;
                if voiced_frames >= self.onset_frames_min {
                    self.state = State::Speaking { last_voiced_end: frame_end, gap_frames: 0 };
                    let audio_start_ms = self.ms(start).saturating_sub(u64::from(self.prefix_padding_ms));
                    Some(VadEvent::SpeechStarted { audio_start_ms })
                } else {
                    self.state = State::Onset { start, voiced_frames, gap_frames: 0 };
                    None
                }
            }
            (State::Onset { start, voiced_frames, gap_frames }, false) => {
                let gap_frames = gap_frames + 1;
                self.state =
                    if gap_frames > self.onset_gap_frames_max { State::Silence } else { State::Onset { start, voiced_frames, gap_frames } };
                None
            }
            (State::Speaking { gap_frames, .. }, true) => {
                self.state = State::Speaking { last_voiced_end: frame_end, gap_frames: 0 };
                self.pause_frames.is_some_and(|p| gap_frames >= p).then_some(VadEvent::SpeechResumed)
            }
            (State::Speaking { last_voiced_end, gap_frames }, false) => {
                let gap_frames = gap_frames + 1;
                if gap_frames >= self.silence_frames {
                    self.state = State::Silence;
                    Some(VadEvent::SpeechStopped { audio_end_ms: self.ms(last_voiced_end) })
                } else {
                    self.state = State::Speaking { last_voiced_end, gap_frames };
                    (self.pause_frames == Some(gap_frames)).then(|| VadEvent::SpeechPaused { audio_end_ms: self.ms(last_voiced_end) })
                }
            }
        }
    }
}

/// The turns the detector finds in `samples` (mono PCM16 at `rate_hz`), as a session cuts them:
/// each turn's `audio_start_ms` (prefix padding included) and the sample index at which it was
/// closed, or the end of `samples` for a turn still open there.
pub fn cut_turns(samples: &[i16], settings: VadSettings, rate_hz: u32) -> Vec<(u64, usize)> {
    let mut vad = EnergyVad::new(settings, rate_hz);
    let mut events = Vec::new();
    vad.push(samples, &mut events);
    let mut turns = Vec::new();
    let mut start_ms = None;
    for (at, event) in events {
        match event {
            VadEvent::SpeechStarted { audio_start_ms } => start_ms = Some(audio_start_ms),
            VadEvent::SpeechStopped { .. } => turns.extend(start_ms.take().map(|start| (start, at))),
            VadEvent::SpeechPaused { .. } | VadEvent::SpeechResumed => {}
        }
    }
    turns.extend(start_ms.map(|start| (start, samples.len())));
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE_HZ: u32 = 16_000;

    use crate::test_rng::Prng;

    fn ms_to_samples(ms: u64) -> usize {
        (ms * u64::from(RATE_HZ) / 1000) as usize
    }

    fn silence(out: &mut Vec<i16>, ms: u64) {
        out.extend(std::iter::repeat_n(0, ms_to_samples(ms)));
    }

    fn tone(out: &mut Vec<i16>, ms: u64, amplitude: f64) {
        let n = ms_to_samples(ms);
        out.extend((0..n).map(|k| (amplitude * (2.0 * std::f64::consts::PI * 440.0 * k as f64 / f64::from(RATE_HZ)).sin()) as i16));
    }

    /// White noise with the given RMS level in dBFS (uniform noise: RMS = amplitude / √3).
    fn noise(out: &mut Vec<i16>, ms: u64, dbfs: f64, rng: &mut Prng) {
        let amplitude = (32768.0 * 10f64.powf(dbfs / 20.0) * 3f64.sqrt()) as i32;
        out.extend((0..ms_to_samples(ms)).map(|_| rng.uniform(amplitude)));
    }

    /// Events with their absolute sample positions.
    fn run(settings: VadSettings, audio: &[i16], chunk_lens: &mut dyn FnMut() -> usize) -> Vec<(u64, VadEvent)> {
        let mut vad = EnergyVad::new(settings, RATE_HZ);
        let mut all = Vec::new();
        let mut offset = 0;
        while offset < audio.len() {
            let len = chunk_lens().clamp(1, audio.len() - offset);
            let mut events = Vec::new();
            vad.push(&audio[offset..offset + len], &mut events);
            for (index, event) in events {
                assert!((1..=len).contains(&index), "index {index} outside a chunk of {len}");
                all.push(((offset + index) as u64, event));
            }
            offset += len;
        }
        assert_eq!(vad.position_ms(), audio.len() as u64 * 1000 / u64::from(RATE_HZ));
        all
    }

    fn run_whole(audio: &[i16]) -> Vec<(u64, VadEvent)> {
        run(VadSettings::default(), audio, &mut || usize::MAX)
    }

    fn assert_near(actual: u64, expected: u64) {
        assert!(actual.abs_diff(expected) <= 10, "{actual} ms is not within 10 ms of {expected} ms");
    }

    #[test]
    fn threshold_maps_to_dbfs() {
        let level = |threshold| VadSettings { threshold, ..VadSettings::default() }.level_dbfs();
        assert_eq!(level(0.0), -60.0);
        assert_eq!(level(0.5), -35.0);
        assert_eq!(level(1.0), -10.0);
        assert_eq!(level(7.0), -10.0);
    }

    #[test]
    fn silence_gives_nothing() {
        let mut audio = Vec::new();
        silence(&mut audio, 5_000);
        assert!(run_whole(&audio).is_empty());
    }

    #[test]
    fn tone_burst_starts_and_stops_at_the_right_ms() {
        let mut audio = Vec::new();
        silence(&mut audio, 800);
        tone(&mut audio, 1_000, 8_000.0);
        silence(&mut audio, 1_000);
        let events = run_whole(&audio);
        assert_eq!(events.len(), 2, "{events:?}");
        let (at, VadEvent::SpeechStarted { audio_start_ms }) = events[0] else { panic!("{events:?}") };
        assert_near(audio_start_ms, 800 - 300);
        // Decided once min_speech_ms of voice has been heard.
        assert_near(at * 1000 / u64::from(RATE_HZ), 800 + 120);
        let (at, VadEvent::SpeechStopped { audio_end_ms }) = events[1] else { panic!("{events:?}") };
        assert_near(audio_end_ms, 1_800);
        assert_near(at * 1000 / u64::from(RATE_HZ), 1_800 + 500);
    }

    #[test]
    fn prefix_padding_clamps_at_zero() {
        let mut audio = Vec::new();
        silence(&mut audio, 100);
        tone(&mut audio, 500, 8_000.0);
        silence(&mut audio, 600);
        let events = run_whole(&audio);
        assert_eq!(events[0].1, VadEvent::SpeechStarted { audio_start_ms: 0 });
    }

    #[test]
    fn a_short_blip_gives_nothing() {
        let mut audio = Vec::new();
        silence(&mut audio, 500);
        tone(&mut audio, 60, 16_000.0);
        silence(&mut audio, 1_000);
        assert!(run_whole(&audio).is_empty());
        // Two blips farther apart than the onset gap do not add up either.
        let mut audio = Vec::new();
        for _ in 0..5 {
            tone(&mut audio, 60, 16_000.0);
            silence(&mut audio, 100);
        }
        assert!(run_whole(&audio).is_empty());
    }

    #[test]
    fn a_short_gap_inside_the_onset_is_tolerated() {
        let mut audio = Vec::new();
        silence(&mut audio, 500);
        tone(&mut audio, 70, 8_000.0);
        silence(&mut audio, 30);
        tone(&mut audio, 70, 8_000.0);
        silence(&mut audio, 1_000);
        let events = run_whole(&audio);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1, VadEvent::SpeechStarted { audio_start_ms: 200 });
        assert_eq!(events[1].1, VadEvent::SpeechStopped { audio_end_ms: 670 });
    }

    #[test]
    fn a_pause_shorter_than_silence_duration_does_not_split_the_turn() {
        let mut audio = Vec::new();
        silence(&mut audio, 500);
        tone(&mut audio, 600, 8_000.0);
        silence(&mut audio, 400);
        tone(&mut audio, 600, 8_000.0);
        silence(&mut audio, 800);
        let events = run_whole(&audio);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1, VadEvent::SpeechStarted { audio_start_ms: 200 });
        assert_eq!(events[1].1, VadEvent::SpeechStopped { audio_end_ms: 2_100 });
    }

    #[test]
    fn a_long_pause_splits_two_turns() {
        let mut audio = Vec::new();
        tone(&mut audio, 600, 8_000.0);
        silence(&mut audio, 1_000);
        tone(&mut audio, 600, 8_000.0);
        silence(&mut audio, 800);
        let events: Vec<VadEvent> = run_whole(&audio).into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            events,
            [
                VadEvent::SpeechStarted { audio_start_ms: 0 },
                VadEvent::SpeechStopped { audio_end_ms: 600 },
                VadEvent::SpeechStarted { audio_start_ms: 1_300 },
                VadEvent::SpeechStopped { audio_end_ms: 2_200 },
            ]
        );
    }

    #[test]
    fn noise_at_minus_50_dbfs_stays_silent_and_at_minus_20_is_speech() {
        let mut rng = Prng(0x5eed);
        let mut quiet = Vec::new();
        noise(&mut quiet, 5_000, -50.0, &mut rng);
        assert!(run_whole(&quiet).is_empty());
        let mut loud = Vec::new();
        noise(&mut loud, 1_000, -20.0, &mut rng);
        silence(&mut loud, 600);
        assert_eq!(run_whole(&loud).len(), 2);
    }

    #[test]
    fn is_speaking_and_reset() {
        let mut vad = EnergyVad::new(VadSettings::default(), RATE_HZ);
        let mut audio = Vec::new();
        tone(&mut audio, 300, 8_000.0);
        let mut events = Vec::new();
        vad.push(&audio, &mut events);
        assert!(vad.is_speaking());
        assert_eq!(vad.position_ms(), 300);
        vad.reset();
        assert!(!vad.is_speaking());
        assert_eq!(vad.position_ms(), 300);
        // After a reset, trailing silence gives no stop: the turn is forgotten.
        events.clear();
        vad.push(&vec![0; ms_to_samples(1_000)], &mut events);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn pauses_are_reported_only_when_asked_and_resume_or_stop_follows() {
        let mut audio = Vec::new();
        silence(&mut audio, 500);
        tone(&mut audio, 600, 8_000.0);
        silence(&mut audio, 100); // shorter than the pause: nothing
        tone(&mut audio, 300, 8_000.0);
        silence(&mut audio, 300); // a pause, then voice again
        tone(&mut audio, 400, 8_000.0);
        silence(&mut audio, 800); // a pause, then the stop
        let with_pauses = |vad: EnergyVad| {
            let mut vad = vad;
            let mut events = Vec::new();
            vad.push(&audio, &mut events);
            events.into_iter().map(|(at, e)| (at as u64 * 1000 / u64::from(RATE_HZ), e)).collect::<Vec<_>>()
        };
        let plain: Vec<VadEvent> = with_pauses(EnergyVad::new(VadSettings::default(), RATE_HZ)).into_iter().map(|(_, e)| e).collect();
        assert_eq!(plain, [VadEvent::SpeechStarted { audio_start_ms: 200 }, VadEvent::SpeechStopped { audio_end_ms: 2_200 }]);
        let events = with_pauses(EnergyVad::new(VadSettings::default(), RATE_HZ).report_pauses(150));
        assert_eq!(
            events,
            [
                (620, VadEvent::SpeechStarted { audio_start_ms: 200 }),
                (1_650, VadEvent::SpeechPaused { audio_end_ms: 1_500 }),
                (1_810, VadEvent::SpeechResumed),
                (2_350, VadEvent::SpeechPaused { audio_end_ms: 2_200 }),
                (2_700, VadEvent::SpeechStopped { audio_end_ms: 2_200 }),
            ]
        );
        // A pause as long as the silence window is no pause.
        let long = with_pauses(EnergyVad::new(VadSettings::default(), RATE_HZ).report_pauses(500));
        assert_eq!(long.len(), 2, "{long:?}");
    }

    #[test]
    fn cut_turns_gives_each_turn_its_start_and_closing_sample() {
        let mut audio = Vec::new();
        tone(&mut audio, 600, 8_000.0);
        silence(&mut audio, 1_000);
        tone(&mut audio, 600, 8_000.0);
        silence(&mut audio, 200); // still open at the end
        let turns = cut_turns(&audio, VadSettings::default(), RATE_HZ);
        assert_eq!(turns, [(0, ms_to_samples(600 + 500)), (1_300, audio.len())]);
    }

    #[test]
    fn property_chunking_does_not_change_events() {
        let mut rng = Prng(0x9e37_79b9_7f4a_7c15);
        for case in 0..200 {
            // Random segments of silence, noise, tones and blips.
            let mut audio = Vec::new();
            for _ in 0..rng.below_u64(12) + 1 {
                let ms = rng.below_u64(900) + 1;
                match rng.below_u64(4) {
                    0 => silence(&mut audio, ms),
                    1 => noise(&mut audio, ms, -60.0 + rng.below_u64(50) as f64, &mut rng),
                    2 => tone(&mut audio, ms, 200.0 + rng.below_u64(20_000) as f64),
                    _ => tone(&mut audio, rng.below_u64(80), 12_000.0),
                }
                // Odd sample counts so frames straddle pushes.
                audio.extend(std::iter::repeat_n(0, rng.below_u64(7) as usize));
            }
            let settings = VadSettings {
                threshold: rng.below_u64(101) as f32 / 100.0,
                prefix_padding_ms: rng.below_u64(500) as u32,
                silence_duration_ms: rng.below_u64(800) as u32,
                min_speech_ms: rng.below_u64(300) as u32,
            };
            let whole = run(settings, &audio, &mut || usize::MAX);
            // Pause reports add events between a start and its stop, and remove none.
            let pause_ms = rng.below_u64(400) as u32;
            let mut paused = EnergyVad::new(settings, RATE_HZ).report_pauses(pause_ms);
            let mut with_pauses = Vec::new();
            paused.push(&audio, &mut with_pauses);
            let turns: Vec<(u64, VadEvent)> = with_pauses
                .iter()
                .filter(|(_, e)| matches!(e, VadEvent::SpeechStarted { .. } | VadEvent::SpeechStopped { .. }))
                .map(|&(at, e)| (at as u64, e))
                .collect();
            assert_eq!(turns, whole, "case {case}: pause reports changed the turns");
            let mut paused_at = None;
            for &(_, e) in &with_pauses {
                match e {
                    VadEvent::SpeechPaused { audio_end_ms } => {
                        assert!(paused_at.is_none(), "case {case}: two pauses without a resume: {with_pauses:?}");
                        paused_at = Some(audio_end_ms);
                    }
                    VadEvent::SpeechResumed => assert!(paused_at.take().is_some(), "case {case}: a resume without a pause"),
                    VadEvent::SpeechStopped { audio_end_ms } => {
                        // A stop after a pause ends the speech where the pause said it did.
                        if let Some(p) = paused_at.take() {
                            assert_eq!(p, audio_end_ms, "case {case}");
                        }
                    }
                    VadEvent::SpeechStarted { .. } => assert!(paused_at.is_none(), "case {case}"),
                }
            }
            let single = run(settings, &audio, &mut || 1);
            assert_eq!(whole, single, "case {case}: one sample at a time");
            let mut split_rng = Prng(case + 1);
            let random = run(settings, &audio, &mut || split_rng.below_u64(2_000) as usize + 1);
            assert_eq!(whole, random, "case {case}: random chunks");
            // Starts and stops alternate, and times never go backwards.
            for pair in whole.windows(2) {
                assert!(pair[0].0 < pair[1].0, "case {case}: {whole:?}");
                assert_ne!(std::mem::discriminant(&pair[0].1), std::mem::discriminant(&pair[1].1), "case {case}: {whole:?}");
            }
            if let Some((_, first)) = whole.first() {
                assert!(matches!(first, VadEvent::SpeechStarted { .. }), "case {case}: {whole:?}");
            }
        }
    }
}
