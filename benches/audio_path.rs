//! The per-frame work of a voice session's inbound audio, per 20 ms frame of 24 kHz PCM16: base64
//! decoding, PCM decoding, resampling to the STT's 16 kHz, and the energy VAD. Plain timing, no
//! framework: `cargo bench --bench audio_path` prints nanoseconds per frame for each step.

use std::hint::black_box;
use std::time::Instant;

use base64::Engine as _;
use voxgate::audio::{decode_to_pcm, AudioFormat, Resampler};
use voxgate::stt::vad::{EnergyVad, VadSettings};

const FRAME: usize = 480; // 20 ms at 24 kHz
const FRAMES: usize = 3_000; // one minute

fn report(name: &str, frames: usize, started: Instant) {
    let ns = started.elapsed().as_secs_f64() * 1e9 / frames as f64;
    // 50 frames a second per session: CPU share of one core for 1,000 sessions.
    println!("{name:<28} {ns:>8.0} ns/frame  {:>6.1}% of a core at 1,000 sessions", ns * 50.0 * 1000.0 / 1e9 * 100.0);
}

fn main() {
    // Speech-like test signal: two tones with a slow envelope and some noise (a fixed LCG).
    let mut seed = 0x2545_f491_u32;
    let samples: Vec<i16> = (0..FRAME * FRAMES)
        .map(|i| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let t = i as f64 / 24_000.0;
            let envelope = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            let tone = (2.0 * std::f64::consts::PI * 220.0 * t).sin() + 0.5 * (2.0 * std::f64::consts::PI * 1_250.0 * t).sin();
            (envelope * tone * 9_000.0 + f64::from((seed >> 16) as i16) / 64.0) as i16
        })
        .collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let encoded: Vec<String> = bytes.chunks(FRAME * 2).map(|c| base64::engine::general_purpose::STANDARD.encode(c)).collect();
    let rounds = 5;

    let started = Instant::now();
    let mut decoded = Vec::with_capacity(FRAME * 2);
    for _ in 0..rounds {
        for frame in &encoded {
            decoded.clear();
            base64::engine::general_purpose::STANDARD.decode_vec(black_box(frame), &mut decoded).expect("valid base64");
            black_box(&decoded);
        }
    }
    report("base64 decode", rounds * FRAMES, started);

    let started = Instant::now();
    let mut pcm = Vec::with_capacity(FRAME);
    for _ in 0..rounds {
        for frame in bytes.chunks(FRAME * 2) {
            pcm.clear();
            decode_to_pcm(AudioFormat::Pcm16 { rate_hz: 24_000 }, black_box(frame), &mut pcm).expect("whole samples");
            black_box(&pcm);
        }
    }
    report("PCM16 decode", rounds * FRAMES, started);

    let started = Instant::now();
    let mut out = Vec::with_capacity(FRAME);
    let mut at_16k = Vec::with_capacity(samples.len() * 2 / 3 + 1);
    for round in 0..rounds {
        let mut resampler = Resampler::new(24_000, 16_000).expect("supported rates");
        for frame in samples.chunks(FRAME) {
            out.clear();
            resampler.process(black_box(frame), &mut out);
            if round == 0 {
                at_16k.extend_from_slice(&out);
            }
        }
    }
    report("resample 24 -> 16 kHz", rounds * FRAMES, started);

    let started = Instant::now();
    let mut events = Vec::new();
    for _ in 0..rounds {
        let mut vad = EnergyVad::new(VadSettings::default(), 16_000);
        for frame in at_16k.chunks(FRAME * 2 / 3) {
            events.clear();
            vad.push(black_box(frame), &mut events);
        }
        black_box(&events);
    }
    report("energy VAD at 16 kHz", rounds * FRAMES, started);
}
