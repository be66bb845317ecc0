//! Audio as every part of a call handles it, independent of any client protocol: formats PCM16 little-endian, G.711 μ-law and A-law (ITU-T G.711), and a
//! streaming [`Resampler`] (linear interpolation, behind a windowed-sinc low-pass when downsampling).
//! Pure code: no I/O, no panics on any input; it allocates only in the caller's `Vec`s and in a resampler's
//! small, bounded buffers.

/// Sample rate of the Realtime API's `audio/pcm` format (the GA API accepts only 24 kHz).
pub const REALTIME_PCM_RATE_HZ: u32 = 24_000;
/// Sample rate of G.711 μ-law and A-law audio (`audio/pcmu`, `audio/pcma`, Twilio).
pub const G711_RATE_HZ: u32 = 8_000;
/// Lowest rate [`Resampler::new`] accepts.
pub const RESAMPLE_RATE_HZ_MIN: u32 = 4_000;
/// Highest rate [`Resampler::new`] accepts; bounds the low-pass filter at 577 taps.
pub const RESAMPLE_RATE_HZ_MAX: u32 = 192_000;

/// What went wrong with audio from or for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    #[error(
        "unsupported audio format {format_type:?}; expected audio/pcm, audio/pcmu or audio/pcma \
         (or the legacy pcm16, g711_ulaw, g711_alaw)"
    )]
    UnsupportedFormat { format_type: String },
    #[error("{format} audio must be {expected_hz} Hz, got {rate_hz} Hz")]
    UnsupportedRate { format: &'static str, rate_hz: u32, expected_hz: u32 },
    #[error("PCM16 audio has 2 bytes per sample, but got an odd number of bytes: {len_bytes}")]
    OddPcm16Length { len_bytes: usize },
    #[error(
        "cannot resample {from_hz} Hz to {to_hz} Hz: both rates must be within {min}..={max} Hz",
        min = RESAMPLE_RATE_HZ_MIN,
        max = RESAMPLE_RATE_HZ_MAX
    )]
    ResampleRate { from_hz: u32, to_hz: u32 },
}

impl AudioError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AudioError::UnsupportedFormat { .. } => "unsupported_format",
            AudioError::UnsupportedRate { .. } => "unsupported_rate",
            AudioError::OddPcm16Length { .. } => "odd_pcm16_length",
            AudioError::ResampleRate { .. } => "resample_rate",
        }
    }
}

/// An audio encoding on the wire. Always mono.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioFormat {
    /// Signed 16-bit little-endian PCM.
    Pcm16 { rate_hz: u32 },
    /// G.711 μ-law, 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law, 8 kHz, one byte per sample.
    Pcma,
}

impl AudioFormat {
    /// The Realtime API's `audio/pcm`: 24 kHz PCM16.
    pub const REALTIME_PCM: AudioFormat = AudioFormat::Pcm16 { rate_hz: REALTIME_PCM_RATE_HZ };

    pub fn rate_hz(self) -> u32 {
        match self {
            AudioFormat::Pcm16 { rate_hz } => rate_hz,
            AudioFormat::Pcmu | AudioFormat::Pcma => G711_RATE_HZ,
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            AudioFormat::Pcm16 { .. } => 2,
            AudioFormat::Pcmu | AudioFormat::Pcma => 1,
        }
    }
}

// G.711, as in ITU-T Rec. G.711 (11/1988) Tables 1a and 2a and its reference code, ITU-T G.191
// Software Tool Library `g711.c` (`ulaw_compress`/`ulaw_expand`, `alaw_compress`/`alaw_expand`), on
// 16-bit left-justified samples. Negative samples are encoded through their one's complement
// (`!x == -x - 1`), as the reference code does, so both polarities quantise symmetrically.

/// μ-law bias (33 in 14-bit units, 132 in 16-bit ones): shifts segment edges to powers of two.
const ULAW_BIAS: i32 = 0x84;
/// Largest μ-law magnitude before the bias; louder samples clip to the top code (decoded ±32124).
const ULAW_CLIP: i32 = 32_635;

/// Encodes one sample to μ-law. `0` is `0xFF`; `-1` (like every magnitude below 4) is `0x7F`.
pub fn ulaw_encode(sample: i16) -> u8 {
    let (sign, magnitude) = if sample < 0 { (0x00, i32::from(!sample)) } else { (0x80, i32::from(sample)) };
    let biased = magnitude.min(ULAW_CLIP) + ULAW_BIAS; // 132..=32767: bit 7 to bit 14 is the highest set
    let exponent = 31 - biased.leading_zeros() - 7; // 0..=7
    let mantissa = (biased >> (exponent + 3)) & 0x0F;
    // Every bit of the code is inverted on the wire; the sign bit is set for non-negative samples.
    sign | (!(((exponent as i32) << 4) | mantissa) as u8 & 0x7F)
}

/// Decodes one μ-law byte: the middle of its quantisation interval, within ±32124.
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// Encodes one sample to A-law. `0` is `0xD5`; `-1` is `0x55`.
pub fn alaw_encode(sample: i16) -> u8 {
    let (sign, magnitude) = if sample < 0 { (0x00, !sample as u16) } else { (0x80, sample as u16) };
    let level = magnitude >> 4; // 0..=2047 in 12-bit units
    let code = if level < 16 {
        level // segment 0: same step as segment 1
    } else {
        let segment = 15 - level.leading_zeros() - 3; // 1..=7
        (segment << 4) as u16 | ((level >> (segment - 1)) & 0x0F)
    };
    // Even bits are inverted on the wire (XOR 0x55); the sign bit is set for non-negative samples.
    (sign | code as u8) ^ 0x55
}

/// Decodes one A-law byte: the middle of its quantisation interval, within ±32256.
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

const ULAW_DECODE: [i16; 256] = decode_table(Law::Mu);
const ALAW_DECODE: [i16; 256] = decode_table(Law::A);

enum Law {
    Mu,
    A,
}

const fn decode_table(law: Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = match law {
            Law::Mu => ulaw_expand(code as u8),
            Law::A => alaw_expand(code as u8),
        };
        code += 1;
    }
    table
}

const fn ulaw_expand(code: u8) -> i16 {
    let inverted = !code;
    let exponent = (inverted >> 4) & 0x07;
    let mantissa = (inverted & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS; // 0..=32124
    if inverted & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_expand(code: u8) -> i16 {
    let code = code ^ 0x55;
    let segment = (code >> 4) & 0x07;
    let mantissa = (code & 0x0F) as i32;
    let magnitude = if segment == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (segment - 1) }; // 8..=32256
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Appends the samples of `bytes` in `format` to `out` (reserving exactly what it adds).
/// PCM16 needs an even byte count; on error `out` is left as it was.
pub fn decode_to_pcm(format: AudioFormat, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), AudioError> {
    match format {
        AudioFormat::Pcm16 { .. } => {
            if !bytes.len().is_multiple_of(2) {
                return Err(AudioError::OddPcm16Length { len_bytes: bytes.len() });
            }
            out.reserve(bytes.len() / 2);
            out.extend(bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])));
        }
        AudioFormat::Pcmu => {
            out.reserve(bytes.len());
            out.extend(bytes.iter().map(|&code| ulaw_decode(code)));
        }
        AudioFormat::Pcma => {
            out.reserve(bytes.len());
            out.extend(bytes.iter().map(|&code| alaw_decode(code)));
        }
    }
    Ok(())
}

/// Appends `samples` encoded in `format` to `out` (reserving exactly what it adds).
pub fn encode_from_pcm(format: AudioFormat, samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * format.bytes_per_sample());
    match format {
        AudioFormat::Pcm16 { .. } => {
            for sample in samples {
                out.extend_from_slice(&sample.to_le_bytes());
            }
        }
        AudioFormat::Pcmu => out.extend(samples.iter().map(|&sample| ulaw_encode(sample))),
        AudioFormat::Pcma => out.extend(samples.iter().map(|&sample| alaw_encode(sample))),
    }
}

/// Low-pass taps per unit of the downsampling ratio on each side of the centre (filter length
/// `2 * ceil(6 * from/to) + 1`: 37 taps for 24 kHz to 8 kHz).
const LOWPASS_HALF_TAPS_PER_RATIO: f64 = 6.0;
/// Low-pass cutoff (−6 dB) as a fraction of the output Nyquist frequency.
const LOWPASS_CUTOFF_FRACTION: f64 = 0.9;
/// Fixed-point scale of the taps (Q15); the taps sum to exactly this, so DC passes unchanged.
const TAP_ONE: i32 = 1 << 15;
/// The largest per-phase weight table a resampler keeps (entries of 4 bytes): every pair of the
/// common rates needs far less (24 to 16 kHz: 40; 22.05 to 24 kHz: 320).
const PHASE_TABLE_ENTRIES_MAX: usize = 8_192;
/// Running sums in [`PhaseTable::apply`]: independent chains the compiler can keep in vector registers.
const LANES: usize = 4;
/// `process` takes its input in pieces of at most this many samples, which bounds its buffer.
const PROCESS_PIECE_SAMPLES_MAX: usize = 4_096;

/// A streaming mono resampler between any two rates in
/// [`RESAMPLE_RATE_HZ_MIN`]`..=`[`RESAMPLE_RATE_HZ_MAX`] (8, 16, 22.05, 24 and 48 kHz are tested in
/// every direction).
///
/// Method: output sample `k` sits at input position `k * from / to`, kept as an exact fraction, and is
/// the linear interpolation of the two input samples around it. When downsampling, those two samples
/// first go through a Hamming-windowed-sinc low-pass (Q15 fixed point, cutoff at 0.9 of the output
/// Nyquist, `2 * ceil(6 * from/to) + 1` taps), evaluated only where an output needs it. Edges repeat
/// the first and last sample, so a constant stays exactly constant.
///
/// Quality, measured with sine tones (gain of the tone / level of everything else, relative to it):
/// - Downsampling by an integer ratio (24 or 48 to 8 kHz, 48 to 16 kHz): flat to half the output
///   band, −0.9 dB at 0.75 and −3.6 dB at 0.85 of the output Nyquist (3.0 and 3.4 kHz at 8 kHz out);
///   aliases at least 55 dB down from 1.25 × the output Nyquist (5 kHz at 8 kHz out), but only about
///   20 dB at 1.05 ×, so some aliasing lands near the top of the output band.
/// - Other downsampling ratios add the droop of the interpolation: 22.05 to 8 kHz −1.4 dB at 3 kHz,
///   24 to 16 kHz −1.2 dB at 4 kHz and −2.3 dB at 6 kHz; interpolation residue −32 dB or lower.
/// - Upsampling is plain linear interpolation: −0.4, −1.6 and −3.8 dB at 1/4, 1/2 and 3/4 of the
///   input Nyquist (1, 2, 3 kHz from 8 kHz), with images only 30, 18 and 11 dB below the tone.
///
/// Good enough for speech into STT and onto the telephone, not for music; a polyphase windowed-sinc
/// interpolator is the upgrade if upsampled telephone audio ever hurts recognition.
///
/// Cost, 24 to 16 kHz: one 20-weight dot product per output sample from the phase table, in exact
/// `f64` arithmetic, about 2.2 µs per 20 ms frame (`cargo bench --bench audio_path`). In general:
/// one or two filter evaluations per output sample (one when `to` divides `from`, as 24 kHz to
/// 8 kHz: 37 multiply-adds per output sample). Memory: the taps and at most about 4,100 buffered
/// input samples, whatever the chunk size. Latency: `process` holds back up to `ceil(6 * from/to) + 1`
/// input samples when downsampling (under 1 ms for the rates above), one when upsampling, until more
/// input or [`Resampler::flush`].
///
/// Output depends only on the whole input, never on how it was chunked; after `flush`, N input
/// samples have given exactly `ceil(N * to / from)` output samples.
#[derive(Debug, Clone)]
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    /// Input position advance per output sample is `step_num / step_den` (= from / to, reduced).
    step_num: u64,
    step_den: u64,
    /// `step_num / step_den` as whole input samples and the remainder: [`Resampler::advance`]
    /// steps without dividing.
    int_step: u64,
    frac_step: u64,
    /// Symmetric low-pass taps in Q15 summing to `TAP_ONE`; a single `TAP_ONE` when not downsampling.
    taps: Box<[i32]>,
    half_taps: u64,
    /// Input samples with absolute indices `pending_start..received`, as `f64` (each exactly its
    /// i16 value) for the phase table's vectorised dot product.
    pending: Vec<f64>,
    pending_start: u64,
    received: u64,
    /// Position of the next output sample: `pos_int + pos_frac / step_den` input samples.
    pos_int: u64,
    pos_frac: u64,
    /// The low-pass and the interpolation folded into one set of weights per phase, when small
    /// enough to keep (see [`PhaseTable`]).
    phases: Option<PhaseTable>,
}

/// Output sample `k` is `(step_den - frac) * F(n) + frac * F(n + 1)` over `step_den * TAP_ONE`,
/// where `F` is the low-pass and `n + frac / step_den` its position. Both filter evaluations read
/// the same input window shifted by one, so their weights add into one row of `taps.len() + 1`
/// integers per `frac`: one dot product per output instead of two, with the identical exact
/// result (the integers are the same; only the order of the additions differs).
#[derive(Debug, Clone)]
struct PhaseTable {
    width: usize,
    /// The divisor `step_den * TAP_ONE` as a shift when it is a power of two (24 to 16 kHz is).
    shift: Option<u32>,
    divisor: i64,
    /// `step_den` rows of `width` integer weights, held as `f64`. Every product and partial sum
    /// of a row with i16 samples is an integer below 2^53, so `f64` arithmetic gives exactly the
    /// integer result in any order, and the order can be the one that vectorises (four running
    /// sums, two SSE2 registers).
    weights: Box<[f64]>,
}

impl PhaseTable {
    fn new(taps: &[i32], step_den: u64) -> Option<PhaseTable> {
        let width = taps.len() + 1;
        let den = usize::try_from(step_den).ok()?;
        if den.checked_mul(width)? > PHASE_TABLE_ENTRIES_MAX {
            return None;
        }
        let mut weights = Vec::with_capacity(den * width);
        for frac in 0..step_den as i64 {
            for j in 0..width {
                let left = taps.get(j).map_or(0, |&t| i64::from(t));
                let right = j.checked_sub(1).and_then(|j| taps.get(j)).map_or(0, |&t| i64::from(t));
                weights.push(i32::try_from((step_den as i64 - frac) * left + frac * right).ok()?);
            }
        }
        let divisor = step_den as i64 * i64::from(TAP_ONE);
        let shift = (divisor as u64).is_power_of_two().then(|| divisor.trailing_zeros());
        // The exactness bound of `weights`: the largest possible |sum| of a row's products.
        let bound = weights.chunks(width).map(|row| row.iter().map(|&w| i64::from(w).abs()).sum::<i64>()).max().unwrap_or(0) * 32_768;
        if bound >= 1 << 53 {
            return None;
        }
        let weights = weights.iter().map(|&w| f64::from(w)).collect();
        Some(PhaseTable { weights, width, shift, divisor })
    }

    /// Row `frac` applied to `window` (exactly `width` samples), rounded as [`div_round`] does.
    #[inline]
    fn apply(&self, frac: usize, window: &[f64]) -> i64 {
        let row = &self.weights[frac * self.width..(frac + 1) * self.width];
        let mut sums = [0f64; LANES];
        let (rows, windows) = (row.chunks_exact(LANES), window.chunks_exact(LANES));
        let (row_rest, window_rest) = (rows.remainder(), windows.remainder());
        for (w, x) in rows.zip(windows) {
            for k in 0..LANES {
                sums[k] += w[k] * x[k];
            }
        }
        for (&w, &x) in row_rest.iter().zip(window_rest) {
            sums[0] += w * x;
        }
        // Exact (see `weights`), so the conversion loses nothing.
        let sum = sums.iter().sum::<f64>() as i64;
        match self.shift {
            Some(shift) => (sum + (self.divisor >> 1)) >> shift,
            None => div_round(sum, self.divisor),
        }
    }
}

impl Resampler {
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, AudioError> {
        let supported = RESAMPLE_RATE_HZ_MIN..=RESAMPLE_RATE_HZ_MAX;
        if !supported.contains(&from_hz) || !supported.contains(&to_hz) {
            return Err(AudioError::ResampleRate { from_hz, to_hz });
        }
        let divisor = gcd(from_hz, to_hz);
        let taps = if from_hz > to_hz { lowpass_taps(f64::from(from_hz) / f64::from(to_hz)) } else { Box::new([TAP_ONE]) };
        let phases = PhaseTable::new(&taps, u64::from(to_hz / divisor));
        Ok(Resampler {
            phases,
            from_hz,
            to_hz,
            step_num: u64::from(from_hz / divisor),
            step_den: u64::from(to_hz / divisor),
            int_step: u64::from(from_hz / divisor) / u64::from(to_hz / divisor),
            frac_step: u64::from(from_hz / divisor) % u64::from(to_hz / divisor),
            half_taps: (taps.len() / 2) as u64,
            taps,
            pending: Vec::new(),
            pending_start: 0,
            received: 0,
            pos_int: 0,
            pos_frac: 0,
        })
    }

    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Appends to `out` every output sample that `input` (after what came before) makes available.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if input.is_empty() {
            return;
        }
        let expected = (input.len() as u64).saturating_mul(self.step_den).div_ceil(self.step_num).saturating_add(1);
        out.reserve(usize::try_from(expected).unwrap_or(0));
        // Chunking does not change the output, so large inputs go in pieces to keep `pending` small.
        for piece in input.chunks(PROCESS_PIECE_SAMPLES_MAX) {
            self.pending.extend(piece.iter().map(|&x| f64::from(x)));
            self.received += piece.len() as u64;
            self.emit(out, false);
            // Keep only what later outputs can still reach.
            let keep_from = self.pos_int.saturating_sub(self.half_taps);
            let stale = keep_from.saturating_sub(self.pending_start).min(self.pending.len() as u64);
            self.pending.drain(..stale as usize);
            self.pending_start += stale;
        }
    }

    /// Ends the stream: appends the remaining output (the last input sample repeated past the end)
    /// and resets, so the resampler can start a new stream.
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        self.emit(out, true);
        self.reset();
    }

    /// Drops any buffered input and starts a new stream (after a barge-in, say).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.pending_start = 0;
        self.received = 0;
        self.pos_int = 0;
        self.pos_frac = 0;
    }

    fn emit(&mut self, out: &mut Vec<i16>, at_end: bool) {
        loop {
            self.emit_tabled(out);
            let ready = if at_end {
                self.pos_int < self.received
            } else {
                // The rightmost input sample this output reads must have arrived.
                self.pos_int + self.half_taps + u64::from(self.pos_frac != 0) < self.received
            };
            if !ready {
                return;
            }
            // An output near an edge of the stream (or one without a phase table): the long way.
            let left = self.filtered(self.pos_int);
            let value = if self.pos_frac == 0 {
                div_round(left, i64::from(TAP_ONE))
            } else {
                let right = self.filtered(self.pos_int + 1);
                // step_den <= RESAMPLE_RATE_HZ_MAX and |left|, |right| < 2^31: no overflow.
                let frac = self.pos_frac as i64;
                let den = self.step_den as i64;
                div_round(left * (den - frac) + right * frac, den * i64::from(TAP_ONE))
            };
            out.push(value.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16);
            self.advance();
        }
    }

    /// Every next output whose whole input window has arrived and lies inside the stream, from the
    /// phase table: the inner loop of a stream's interior. Such an output is always ready, so this
    /// emits exactly what [`Self::emit`]'s loop would, only faster.
    fn emit_tabled(&mut self, out: &mut Vec<i16>) {
        let Some(table) = self.phases.as_ref() else { return };
        let (mut pos_int, mut pos_frac) = (self.pos_int, self.pos_frac);
        while let Some(lo) = pos_int.checked_sub(self.half_taps) {
            if lo < self.pending_start || lo + table.width as u64 > self.received {
                break;
            }
            let start = (lo - self.pending_start) as usize;
            let Some(window) = self.pending.get(start..start + table.width) else { break };
            out.push(table.apply(pos_frac as usize, window).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16);
            (pos_int, pos_frac) = self.next_position(pos_int, pos_frac);
        }
        (self.pos_int, self.pos_frac) = (pos_int, pos_frac);
    }

    fn advance(&mut self) {
        (self.pos_int, self.pos_frac) = self.next_position(self.pos_int, self.pos_frac);
    }

    /// The position one output after `pos_int + pos_frac / step_den`, without dividing.
    #[inline]
    fn next_position(&self, pos_int: u64, pos_frac: u64) -> (u64, u64) {
        let (int, frac) = (pos_int + self.int_step, pos_frac + self.frac_step);
        if frac >= self.step_den {
            (int + 1, frac - self.step_den)
        } else {
            (int, frac)
        }
    }

    /// The low-passed input at absolute index `center`, in Q15; indices outside the input repeat
    /// the first or last sample. Only called with `pending_start..received` covering the window.
    fn filtered(&self, center: u64) -> i64 {
        let last = self.received.saturating_sub(1);
        if let (Some(lo), true) = (center.checked_sub(self.half_taps), center + self.half_taps <= last) {
            let start = (lo.saturating_sub(self.pending_start)) as usize;
            if let Some(window) = self.pending.get(start..start + self.taps.len()) {
                return self.taps.iter().zip(window).map(|(&tap, &sample)| i64::from(tap) * sample as i64).sum();
            }
        }
        let first_index = center as i64 - self.half_taps as i64;
        self.taps
            .iter()
            .enumerate()
            .map(|(offset, &tap)| {
                let index = (first_index + offset as i64).clamp(0, last as i64) as u64;
                let sample = self.pending.get(index.saturating_sub(self.pending_start) as usize).copied().unwrap_or(0.0);
                i64::from(tap) * sample as i64
            })
            .sum()
    }
}

/// Hamming-windowed sinc low-pass for downsampling by `ratio` (> 1), in Q15 summing to exactly `TAP_ONE`.
fn lowpass_taps(ratio: f64) -> Box<[i32]> {
    let half = (LOWPASS_HALF_TAPS_PER_RATIO * ratio).ceil() as usize;
    let len = 2 * half + 1;
    let cutoff = 0.5 / ratio * LOWPASS_CUTOFF_FRACTION; // cycles per input sample
    let ideal: Vec<f64> = (0..len)
        .map(|n| {
            let t = n as f64 - half as f64;
            let sinc = if n == half { 2.0 * cutoff } else { (2.0 * std::f64::consts::PI * cutoff * t).sin() / (std::f64::consts::PI * t) };
            let window = 0.54 - 0.46 * (2.0 * std::f64::consts::PI * n as f64 / (len - 1) as f64).cos();
            sinc * window
        })
        .collect();
    let sum: f64 = ideal.iter().sum();
    let mut taps: Vec<i32> = ideal.iter().map(|tap| (tap / sum * f64::from(TAP_ONE)).round() as i32).collect();
    let rounding_error = TAP_ONE - taps.iter().sum::<i32>();
    taps[half] += rounding_error;
    taps.into_boxed_slice()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `num / den` rounded to nearest (halves up), for `den > 0`.
fn div_round(num: i64, den: i64) -> i64 {
    (num + den / 2).div_euclid(den)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES_HZ: [u32; 5] = [8_000, 16_000, 22_050, 24_000, 48_000];

    use crate::test_rng::Prng;

    fn resample_chunked(from_hz: u32, to_hz: u32, input: &[i16], rng: &mut Prng, chunk_max: usize) -> Vec<i16> {
        let mut resampler = Resampler::new(from_hz, to_hz).unwrap();
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rng.below(chunk_max + 1).min(rest.len()));
            resampler.process(chunk, &mut out);
            rest = tail;
        }
        resampler.flush(&mut out);
        out
    }

    fn resample(from_hz: u32, to_hz: u32, input: &[i16]) -> Vec<i16> {
        let mut resampler = Resampler::new(from_hz, to_hz).unwrap();
        let mut out = Vec::new();
        resampler.process(input, &mut out);
        resampler.flush(&mut out);
        out
    }

    fn sine(rate_hz: u32, freq_hz: f64, amplitude: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| (amplitude * (2.0 * std::f64::consts::PI * freq_hz * n as f64 / f64::from(rate_hz)).sin()).round() as i16)
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    // Expected values from ITU-T G.191 STL g711.c (and the tables of ITU-T G.711, scaled to 16 bits):
    // μ-law code 0x00 is the most negative level, -(((15 << 3) + 132) << 7) + 132 = -32124; A-law 0x55
    // is 0x00 after the even-bit inversion, the smallest negative level, -(0 << 4) - 8 = -8.
    #[test]
    fn g711_known_vectors() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(ulaw_decode(0x80), 32_124);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0xEF), 132); // !0xEF = 0x10: exponent 1, mantissa 0: (132 << 1) - 132
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0xAA), 32_256);
        assert_eq!(alaw_decode(0x2A), -32_256);
    }

    /// μ-law has two zero codes: 0xFF (+0) and 0x7F (−0). Both decode to 0, which encodes as 0xFF,
    /// so 0x7F is the one byte that does not survive a round trip.
    #[test]
    fn ulaw_round_trips_every_byte_except_negative_zero() {
        for code in 0..=255u8 {
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(ulaw_encode(ulaw_decode(code)), expected, "code {code:#04x}");
        }
    }

    #[test]
    fn alaw_round_trips_every_byte() {
        for code in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(code)), code, "code {code:#04x}");
        }
    }

    /// Every i16 decodes back to the middle of its segment's interval: error at most half a step,
    /// where the step is 8 << segment (μ-law) or 16 << max(segment - 1, 0) (A-law). μ-law clips
    /// magnitudes above 32635 to its top level, ±32124. The quantiser is also monotonic.
    #[test]
    fn g711_quantisation_error_within_segment_bound() {
        let mut previous = (i16::MIN, i16::MIN);
        for sample in i16::MIN..=i16::MAX {
            let magnitude = if sample < 0 { i32::from(!sample) } else { i32::from(sample) };
            let code = ulaw_encode(sample);
            let decoded = ulaw_decode(code);
            let segment = (!code >> 4) & 0x07;
            if magnitude > ULAW_CLIP {
                assert_eq!(decoded, if sample < 0 { -32_124 } else { 32_124 }, "μ-law {sample}");
            } else {
                let error = (i32::from(sample) - i32::from(decoded)).abs();
                assert!(error <= 4 << segment, "μ-law {sample}: decoded {decoded}, segment {segment}");
            }

            let code = alaw_encode(sample);
            let decoded_alaw = alaw_decode(code);
            let segment = ((code ^ 0x55) >> 4) & 0x07;
            let error = (i32::from(sample) - i32::from(decoded_alaw)).abs();
            assert!(error <= 8 << segment.saturating_sub(1), "A-law {sample}: decoded {decoded_alaw}, segment {segment}");

            assert!(decoded >= previous.0 && decoded_alaw >= previous.1, "not monotonic at {sample}");
            previous = (decoded, decoded_alaw);
        }
    }

    #[test]
    fn slices_decode_and_encode() {
        let mut rng = Prng(0x5EED);
        let samples: Vec<i16> = (0..999).map(|_| rng.sample()).collect();
        let pcm = AudioFormat::REALTIME_PCM;
        let mut bytes = Vec::new();
        encode_from_pcm(pcm, &samples, &mut bytes);
        assert_eq!(bytes.len(), samples.len() * 2);
        assert_eq!(&bytes[..2], &samples[0].to_le_bytes());
        let mut decoded = vec![7];
        decode_to_pcm(pcm, &bytes, &mut decoded).unwrap();
        assert_eq!(decoded[0], 7, "decode appends");
        assert_eq!(&decoded[1..], &samples[..]);

        for (format, encode) in [(AudioFormat::Pcmu, ulaw_encode as fn(i16) -> u8), (AudioFormat::Pcma, alaw_encode)] {
            let mut bytes = Vec::new();
            encode_from_pcm(format, &samples, &mut bytes);
            assert_eq!(bytes, samples.iter().map(|&s| encode(s)).collect::<Vec<_>>());
            let mut decoded = Vec::new();
            decode_to_pcm(format, &bytes, &mut decoded).unwrap();
            let mut again = Vec::new();
            encode_from_pcm(format, &decoded, &mut again);
            assert_eq!(again, bytes, "{format:?}: decode then encode is lossless");
        }

        let mut out = Vec::new();
        decode_to_pcm(pcm, &[], &mut out).unwrap();
        decode_to_pcm(AudioFormat::Pcmu, &[], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn odd_pcm16_byte_count_is_an_error() {
        let mut out = vec![1, 2];
        let err = decode_to_pcm(AudioFormat::REALTIME_PCM, &[0, 1, 2], &mut out).unwrap_err();
        assert_eq!(err, AudioError::OddPcm16Length { len_bytes: 3 });
        assert_eq!(err.kind(), "odd_pcm16_length");
        assert!(err.to_string().contains('3'), "{err}");
        assert_eq!(out, [1, 2], "out is untouched on error");
        assert!(decode_to_pcm(AudioFormat::Pcmu, &[0, 1, 2], &mut out).is_ok(), "one byte per sample: any length");
    }

    #[test]
    fn resampler_rejects_unsupported_rates() {
        for (from_hz, to_hz) in [(0, 8_000), (8_000, 0), (24_000, u32::MAX), (3_999, 8_000), (8_000, 192_001)] {
            let err = Resampler::new(from_hz, to_hz).unwrap_err();
            assert_eq!(err.kind(), "resample_rate");
        }
        assert!(Resampler::new(RESAMPLE_RATE_HZ_MAX, RESAMPLE_RATE_HZ_MIN).is_ok());
    }

    #[test]
    fn resampler_output_length_for_every_rate_pair_and_chunking() {
        let mut rng = Prng(42);
        for from_hz in RATES_HZ {
            for to_hz in RATES_HZ {
                for _ in 0..8 {
                    let len = rng.below(3_000);
                    let input: Vec<i16> = (0..len).map(|_| rng.sample()).collect();
                    let out = resample_chunked(from_hz, to_hz, &input, &mut rng, 500);
                    let exact = len as f64 * f64::from(to_hz) / f64::from(from_hz);
                    assert!((out.len() as f64 - exact).abs() <= 1.0, "{from_hz} -> {to_hz}: {len} in, {} out", out.len());
                    assert_eq!(out.len() as u64, (len as u64 * u64::from(to_hz)).div_ceil(u64::from(from_hz)));
                }
            }
        }
    }

    /// Chunking never changes the output: not only within ±1, but exactly.
    #[test]
    fn resampler_phase_table_gives_exactly_the_two_filter_result() {
        let mut rng = Prng(11);
        let mut tabled_pairs = 0;
        for from_hz in RATES_HZ.into_iter().chain([44_100]) {
            for to_hz in RATES_HZ {
                let mut input: Vec<i16> = (0..6_000).map(|_| rng.sample()).collect();
                input.extend([i16::MAX; 200].iter().chain(&[i16::MIN; 200])); // full scale both ways
                let mut tabled = Resampler::new(from_hz, to_hz).unwrap();
                tabled_pairs += usize::from(tabled.phases.is_some());
                let mut plain = tabled.clone();
                plain.phases = None;
                let (mut a, mut b) = (Vec::new(), Vec::new());
                tabled.process(&input, &mut a);
                tabled.flush(&mut a);
                plain.process(&input, &mut b);
                plain.flush(&mut b);
                assert_eq!(a, b, "{from_hz} -> {to_hz}");
            }
        }
        assert!(tabled_pairs >= 25, "the common rate pairs use the table ({tabled_pairs} of 30)");
    }

    #[test]
    fn resampler_chunked_equals_one_shot() {
        let mut rng = Prng(7);
        for from_hz in RATES_HZ {
            for to_hz in RATES_HZ {
                let input: Vec<i16> = (0..10_000).map(|_| rng.sample()).collect(); // more than one process piece
                let one_shot = resample(from_hz, to_hz, &input);
                for chunk_max in [1, 3, 160, 1_000] {
                    let chunked = resample_chunked(from_hz, to_hz, &input, &mut rng, chunk_max);
                    assert_eq!(chunked, one_shot, "{from_hz} -> {to_hz}, chunks up to {chunk_max}");
                }
            }
        }
    }

    #[test]
    fn resampler_keeps_1khz_sine_frequency_and_amplitude() {
        let amplitude = 10_000.0;
        for (from_hz, to_hz) in [(24_000, 16_000), (24_000, 8_000), (48_000, 8_000), (22_050, 16_000), (8_000, 24_000), (16_000, 48_000)] {
            let input = sine(from_hz, 1_000.0, amplitude, from_hz as usize / 2); // 0.5 s
            let out = resample_chunked(from_hz, to_hz, &input, &mut Prng(1), 480);
            // Skip the edges, where the filter sees repeated samples.
            let body = &out[out.len() / 10..out.len() * 9 / 10];
            let crossings = body.windows(2).filter(|pair| (pair[0] < 0) != (pair[1] < 0)).count();
            let freq_hz = crossings as f64 / 2.0 / (body.len() as f64 / f64::from(to_hz));
            assert!((freq_hz - 1_000.0).abs() < 10.0, "{from_hz} -> {to_hz}: {freq_hz} Hz");
            let amplitude_out = rms(body) * std::f64::consts::SQRT_2;
            assert!((amplitude_out / amplitude - 1.0).abs() < 0.1, "{from_hz} -> {to_hz}: amplitude {amplitude_out}");
        }
    }

    /// A 6 kHz tone cannot exist at 8 kHz; downsampling must remove it, not fold it to 2 kHz.
    #[test]
    fn resampler_low_pass_rejects_aliases() {
        for from_hz in [16_000, 24_000, 48_000] {
            let input = sine(from_hz, 6_000.0, 10_000.0, from_hz as usize / 2);
            let out = resample(from_hz, 8_000, &input);
            let body = &out[out.len() / 10..out.len() * 9 / 10];
            assert!(rms(body) < 10_000.0 * 0.01, "{from_hz} -> 8000: alias rms {}", rms(body));
        }
    }

    #[test]
    fn resampler_dc_stays_dc() {
        for from_hz in RATES_HZ {
            for to_hz in RATES_HZ {
                for level in [0, 1, -1, 12_345, i16::MAX, i16::MIN] {
                    let out = resample_chunked(from_hz, to_hz, &vec![level; 1_001], &mut Prng(3), 100);
                    assert!(out.iter().all(|&s| s == level), "{from_hz} -> {to_hz} at {level}");
                }
            }
        }
    }

    #[test]
    fn resampler_empty_input_gives_empty_output() {
        for from_hz in RATES_HZ {
            for to_hz in RATES_HZ {
                let mut resampler = Resampler::new(from_hz, to_hz).unwrap();
                let mut out = Vec::new();
                resampler.process(&[], &mut out);
                resampler.flush(&mut out);
                assert!(out.is_empty());
            }
        }
    }

    /// Full-scale alternation makes the low-pass overshoot: the output clamps instead of wrapping.
    #[test]
    fn resampler_survives_full_scale_input_and_restarts_after_flush() {
        let input: Vec<i16> = (0..2_000).map(|n| if n % 3 == 0 { i16::MIN } else { i16::MAX }).collect();
        let mut resampler = Resampler::new(48_000, 22_050).unwrap();
        let mut first = Vec::new();
        resampler.process(&input, &mut first);
        resampler.flush(&mut first);
        let mut second = Vec::new();
        resampler.process(&input, &mut second);
        resampler.flush(&mut second);
        assert_eq!(first, second, "flush starts a fresh stream");
        assert_eq!(first, resample(48_000, 22_050, &input));
    }

    #[test]
    fn resampler_buffer_stays_bounded_for_large_chunks() {
        let input: Vec<i16> = (0..100_000).map(|n| (n % 200) as i16).collect();
        for (from_hz, to_hz) in [(48_000, 8_000), (8_000, 48_000), (192_000, 4_000)] {
            let mut resampler = Resampler::new(from_hz, to_hz).unwrap();
            let mut out = Vec::new();
            resampler.process(&input, &mut out);
            let bound = PROCESS_PIECE_SAMPLES_MAX + resampler.taps.len() + 2;
            assert!(resampler.pending.capacity() <= 2 * bound, "{from_hz} -> {to_hz}: {}", resampler.pending.capacity());
            assert!(resampler.pending.len() <= resampler.taps.len() + (from_hz / to_hz) as usize + 2);
        }
    }
}
