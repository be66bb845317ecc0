//! Whisper's input features: the log10 mel power spectrum of the last `n_fft` samples, every
//! `hop_length` samples. The same arithmetic as the `mel_spec` 0.3.4 crate that computed them
//! before (its Hann window, rustfft's transform, librosa's Slaney filter bank, the top bin set to
//! zero, the mel sums accumulated in bin order with fused multiply-adds), so the encoder sees the
//! same numbers; `mel_spec` itself also drew pictures and brought an image library with it.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// log10 of the smallest mel power kept: what silence gives.
pub const LOG_POWER_MIN: f64 = -10.0;

/// The fixed parts: window, transform plan and filter bank.
pub struct LogMel {
    n_fft: usize,
    hop_length: usize,
    n_mels: usize,
    /// `n_mels` rows of `n_fft / 2 + 1` weights.
    filters: Vec<f64>,
    /// Per row, the bins from its first to its last weight above zero: the sum skips the zeros
    /// around a triangle (adding `0 * power` leaves a sum of non-negative terms unchanged), which
    /// saves some 40 times the work.
    spans: Vec<std::ops::Range<usize>>,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
}

impl LogMel {
    /// Panics when `hop_length` is zero or over `n_fft`, or `n_fft` is under 2.
    pub fn new(rate_hz: f64, n_fft: usize, hop_length: usize, n_mels: usize) -> LogMel {
        assert!(n_fft >= 2 && (1..=n_fft).contains(&hop_length), "n_fft {n_fft}, hop_length {hop_length}");
        let window = (0..n_fft).map(|i| 0.5 * (1.0 - f64::cos((2.0 * std::f64::consts::PI * i as f64) / n_fft as f64))).collect();
        let fft = FftPlanner::new().plan_fft_forward(n_fft);
        let filters = slaney_filters(rate_hz, n_fft, n_mels);
        let spans = filters
            .chunks_exact(n_fft / 2 + 1)
            .map(|row| match (row.iter().position(|&w| w != 0.0), row.iter().rposition(|&w| w != 0.0)) {
                (Some(first), Some(last)) => first..last + 1,
                _ => 0..0,
            })
            .collect();
        LogMel { n_fft, hop_length, n_mels, filters, spans, window, fft }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// A transform that starts from silence.
    pub fn stft(&self) -> Stft<'_> {
        let zero = Complex::new(0.0, 0.0);
        Stft {
            mel: self,
            samples: vec![0.0; self.n_fft],
            seen: 0,
            buffer: vec![zero; self.n_fft],
            scratch: vec![zero; self.fft.get_inplace_scratch_len()],
            power: vec![0.0; self.n_fft / 2 + 1],
        }
    }
}

/// A short-time Fourier transform fed one hop at a time.
pub struct Stft<'a> {
    mel: &'a LogMel,
    /// The last `n_fft` samples (zeros before the first).
    samples: Vec<f64>,
    seen: u64,
    buffer: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl Stft<'_> {
    /// Adds one hop of at most `hop_length` samples (a shorter one is padded with zeros, but counts
    /// only its own samples) and, once `n_fft` samples were added, writes the log10 mel power of the
    /// last `n_fft` into `out` (`n_mels` values) and returns true.
    pub fn add(&mut self, hop: &[f32], out: &mut [f64]) -> bool {
        let (n_fft, hop_length) = (self.mel.n_fft, self.mel.hop_length);
        assert!(hop.len() <= hop_length && out.len() == self.mel.n_mels);
        self.samples.copy_within(hop_length.., 0);
        let tail = &mut self.samples[n_fft - hop_length..];
        tail.fill(0.0);
        tail.iter_mut().zip(hop).for_each(|(s, &h)| *s = f64::from(h));
        self.seen = self.seen.wrapping_add(hop.len() as u64);
        if self.seen < n_fft as u64 {
            return false;
        }
        for ((b, &s), &w) in self.buffer.iter_mut().zip(&self.samples).zip(&self.mel.window) {
            *b = Complex::new(s * w, 0.0);
        }
        self.mel.fft.process_with_scratch(&mut self.buffer, &mut self.scratch);
        // The power of the first n_fft / 2 bins; the top (Nyquist) bin stays zero, as it did.
        for (p, b) in self.power.iter_mut().zip(&self.buffer[..n_fft / 2]) {
            *p = b.norm_sqr();
        }
        let bins = self.power.len();
        for ((o, row), span) in out.iter_mut().zip(self.mel.filters.chunks_exact(bins)).zip(&self.mel.spans) {
            let (weights, power) = (&row[span.clone()], &self.power[span.clone()]);
            let sum = weights.iter().zip(power).fold(0.0_f64, |acc, (&w, &p)| w.mul_add(p, acc));
            *o = sum.max(1e-10).log10();
        }
        true
    }
}

/// librosa's `filters.mel(sr, n_fft, n_mels, htk=False, norm="slaney")` from 0 Hz to Nyquist:
/// triangles on the Slaney mel scale, each scaled to unit area.
fn slaney_filters(rate_hz: f64, n_fft: usize, n_mels: usize) -> Vec<f64> {
    let bins = n_fft / 2 + 1;
    let step_hz = rate_hz / n_fft as f64;
    let fft_hz: Vec<f64> = (0..bins).map(|i| step_hz * i as f64).collect();
    // n_mels + 2 edges evenly spaced in mels.
    let (low, high) = (hz_to_mel(0.0), hz_to_mel(rate_hz / 2.0));
    let points = n_mels + 2;
    let mel_step = (high - low) / (points - 1) as f64;
    let edges_hz: Vec<f64> = (0..points).map(|i| mel_to_hz(low + mel_step * i as f64)).collect();
    let mut filters = vec![0.0; n_mels * bins];
    for (i, row) in filters.chunks_exact_mut(bins).enumerate() {
        let (rise, fall) = (edges_hz[i + 1] - edges_hz[i], edges_hz[i + 2] - edges_hz[i + 1]);
        let area_norm = 2.0 / (edges_hz[i + 2] - edges_hz[i]);
        for (w, &f) in row.iter_mut().zip(&fft_hz) {
            let lower = -(edges_hz[i] - f) / rise;
            let upper = (edges_hz[i + 2] - f) / fall;
            *w = lower.max(0.0).min(1.0).min(upper.max(0.0).min(1.0)) * area_norm;
        }
    }
    filters
}

const MEL_HZ_PER_MEL: f64 = 200.0 / 3.0;
const MEL_LOG_FROM_HZ: f64 = 1000.0;

fn mel_log_step() -> f64 {
    6.4_f64.ln() / 27.0
}

/// Slaney's mel scale: linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    let min_log_mel = MEL_LOG_FROM_HZ / MEL_HZ_PER_MEL;
    if hz >= MEL_LOG_FROM_HZ {
        min_log_mel + (hz / MEL_LOG_FROM_HZ).ln() / mel_log_step()
    } else {
        hz / MEL_HZ_PER_MEL
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let min_log_mel = MEL_LOG_FROM_HZ / MEL_HZ_PER_MEL;
    if mel >= min_log_mel {
        MEL_LOG_FROM_HZ * (mel_log_step() * (mel - min_log_mel)).exp()
    } else {
        MEL_HZ_PER_MEL * mel
    }
}
