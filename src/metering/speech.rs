//! What a session's speech costs at its vendors' list prices: speech-to-text per audio minute,
//! text-to-speech per thousand characters, in integer picodollars like the gateway's token costs.
//!
//! Prices are written in the catalog's `[[speech]]` entries (and the user's, laid over them);
//! [`PriceList`] validates them and [`SpeechPrices`] holds the price of each engine as the engines
//! name themselves (a transcript's `engine`, a TTS engine's `name()`), resolved once at start-up.
//! Built-in engines cost nothing unless an entry gives them a price. The meter keeps, per stage and
//! engine, the quantity used and its price ([`SpeechUsage`]); a record's [`SpeechLine`]s carry the
//! cost, rounded once per line (see [`stt_cost_picousd`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::llm::config::RawSpeechPrice;

/// A speech-to-text price: micro-dollars per minute of audio (exact for any price with up to six decimals).
pub type MicroUsdPerMinute = u64;
/// A text-to-speech price: micro-dollars per thousand characters.
pub type MicroUsdPerKchar = u64;

/// Built-in speech-to-text engines, as `[stt]` names them, and the names they run under.
const STT_BUILTINS: &[(&str, &[&str])] = &[("embedded", &["whisper-tiny-en"]), ("fake", &["fake"])];
/// Built-in text-to-speech engines, as `[tts]` names them, and the names they run under (the
/// embedded Piper voice falls back to espeak-ng).
const TTS_BUILTINS: &[(&str, &[&str])] =
    &[("embedded", &["piper-en-us-joe-medium", "espeak-ng"]), ("espeak", &["espeak-ng"]), ("fake", &["fake"])];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Stt,
    Tts,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stt => "stt",
            Stage::Tts => "tts",
        }
    }

    fn builtins(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Stage::Stt => STT_BUILTINS,
            Stage::Tts => TTS_BUILTINS,
        }
    }

    fn price_field(self) -> &'static str {
        match self {
            Stage::Stt => "usd_per_audio_minute",
            Stage::Tts => "usd_per_kchar",
        }
    }
}

/// Cost of `audio_ms` of speech-to-text at `price` (µUSD per minute), in picodollars, rounded to the
/// nearest: `audio_ms × price × 10⁶ / 60 000 = audio_ms × price × 50 / 3`. The division by 3 is
/// the only inexact step (its fraction is ⅓ or ⅔, never a tie), so this is the one rounding, made
/// on a session's total per engine, never per utterance: under half a picodollar per line.
pub fn stt_cost_picousd(audio_ms: u64, price: MicroUsdPerMinute) -> u64 {
    let num = (audio_ms as u128).saturating_mul(price as u128).saturating_mul(1_000_000);
    let den = 60_000u128;
    u64::try_from(num.saturating_add(den / 2) / den).unwrap_or(u64::MAX)
}

/// Cost of `chars` characters of text-to-speech at `price` (µUSD per 1000 characters), in
/// picodollars, exactly: `chars × price × 1000`.
pub fn tts_cost_picousd(chars: u64, price: MicroUsdPerKchar) -> u64 {
    u64::try_from((chars as u128).saturating_mul(price as u128).saturating_mul(1_000)).unwrap_or(u64::MAX)
}

/// One engine's speech in a session's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeechLine {
    pub stage: Stage,
    /// The engine as it names itself: a `[providers.NAME]` id, or a built-in engine's name.
    pub engine: String,
    /// Milliseconds of audio sent to speech-to-text, or characters sent to text-to-speech.
    pub quantity: u64,
    /// µUSD per audio minute (stt) or per thousand characters (tts); `None` when no list price is
    /// known for the engine (its cost is then recorded as 0).
    pub price_microusd: Option<u64>,
    pub cost_picousd: u64,
}

/// A session's speech so far, per stage and engine: quantities and prices; costs are computed from
/// the totals when a record is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeechUsage {
    lines: BTreeMap<(Stage, String), (u64, Option<u64>)>,
}

impl SpeechUsage {
    pub fn add(&mut self, stage: Stage, engine: &str, quantity: u64, price: Option<u64>) {
        match self.lines.get_mut(&(stage, engine.to_string())) {
            Some((q, p)) => {
                *q = q.saturating_add(quantity);
                *p = price;
            }
            None => {
                self.lines.insert((stage, engine.to_string()), (quantity, price));
            }
        }
    }

    /// One line per stage and engine, in that order, each with its cost.
    pub fn lines(&self) -> Vec<SpeechLine> {
        self.lines
            .iter()
            .map(|((stage, engine), &(quantity, price))| {
                let cost_picousd = match (stage, price) {
                    (_, None) => 0,
                    (Stage::Stt, Some(p)) => stt_cost_picousd(quantity, p),
                    (Stage::Tts, Some(p)) => tts_cost_picousd(quantity, p),
                };
                SpeechLine { stage: *stage, engine: engine.clone(), quantity, price_microusd: price, cost_picousd }
            })
            .collect()
    }
}

/// A group's speech of one stage and engine, summed over its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeechTotal {
    pub stage: Stage,
    pub engine: String,
    pub quantity: u64,
    pub cost_picousd: u64,
}

/// Sum of the lines of one stage, in picodollars.
pub fn stage_cost_picousd(lines: &[SpeechLine], stage: Stage) -> u64 {
    lines.iter().filter(|l| l.stage == stage).fold(0u64, |sum, l| sum.saturating_add(l.cost_picousd))
}

/// The price of each engine a session may use, by the name the engine runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeechPrices {
    prices: BTreeMap<(Stage, String), Option<u64>>,
}

impl SpeechPrices {
    /// Prices every built-in engine at 0 unless `list` prices it.
    pub fn with_builtins(list: &PriceList) -> SpeechPrices {
        let mut prices = SpeechPrices::default();
        for stage in [Stage::Stt, Stage::Tts] {
            for (name, runs_as) in stage.builtins() {
                let price = list.user_price(stage, name, None).unwrap_or(0);
                for engine in *runs_as {
                    prices.set(stage, engine, Some(price));
                }
            }
        }
        prices
    }

    pub fn set(&mut self, stage: Stage, engine: &str, price: Option<u64>) {
        self.prices.insert((stage, engine.to_string()), price);
    }

    /// The engine's price; `None` for an engine without a known price (one this table was not told
    /// of, or a vendor model the catalog does not list).
    pub fn price(&self, stage: Stage, engine: &str) -> Option<u64> {
        self.prices.get(&(stage, engine.to_string())).copied().flatten()
    }
}

/// One validated `[[speech]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    stage: Stage,
    engine: String,
    model: Option<String>,
    price: u64,
}

/// The catalog's `[[speech]]` prices with the user's laid over them: an entry of the user's for the
/// same stage, engine and model replaces the built-in one, and one without `model` prices every
/// model of its engine the user does not price one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceList {
    catalog: Vec<Entry>,
    user: Vec<Entry>,
}

/// `usd` as integer micro-dollars: a price of 0 or more, at most $1,000,000, with at most six decimals
/// (money is kept exact; a finer price would be silently rounded).
pub fn microusd(usd: f64, what: &str) -> Result<u64, String> {
    if !usd.is_finite() || !(0.0..=1e6).contains(&usd) {
        return Err(format!("{what} = {usd} must be a price in USD of 0 or more (at most 1000000)"));
    }
    let micro = usd * 1e6;
    if (micro - micro.round()).abs() > 1e-3 {
        return Err(format!("{what} = {usd} has more than six decimals; prices are kept in whole micro-dollars"));
    }
    Ok(micro.round() as u64)
}

fn entries(raw: &[RawSpeechPrice], origin: &str) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    for (n, r) in raw.iter().enumerate() {
        let at = format!("{origin}speech[{n}] (engine {:?})", r.engine);
        if r.engine.trim().is_empty() {
            return Err(format!("{origin}speech[{n}]: engine is empty; name a [providers] speech vendor or a built-in engine"));
        }
        if r.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(format!("{at}: model is empty; leave it out to price every model of the engine"));
        }
        let (stage, usd) = match (r.usd_per_audio_minute, r.usd_per_kchar) {
            (Some(usd), None) => (Stage::Stt, usd),
            (None, Some(usd)) => (Stage::Tts, usd),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{at}: give usd_per_audio_minute (speech-to-text) or usd_per_kchar (text-to-speech), not both; write two entries for a vendor that does both"
                ))
            }
            (None, None) => return Err(format!("{at}: needs usd_per_audio_minute (speech-to-text) or usd_per_kchar (text-to-speech)")),
        };
        let price = microusd(usd, &format!("{at}.{}", stage.price_field()))?;
        let entry = Entry { stage, engine: r.engine.clone(), model: r.model.clone(), price };
        if out.iter().any(|e| e.stage == stage && e.engine == entry.engine && e.model == entry.model) {
            return Err(format!(
                "{at}: {} is priced twice for model {:?}; keep one entry",
                stage.as_str(),
                entry.model.as_deref().unwrap_or("(any)")
            ));
        }
        out.push(entry);
    }
    Ok(out)
}

impl PriceList {
    /// Validates the built-in catalog's entries and the user's. `is_vendor(stage, engine)` says
    /// whether the user's entry names a configured `[providers.NAME]` vendor of that stage; every
    /// user entry must name one, or a built-in engine of its stage.
    pub fn from_raw(
        catalog: &[RawSpeechPrice],
        user: &[RawSpeechPrice],
        is_vendor: &dyn Fn(Stage, &str) -> bool,
    ) -> Result<PriceList, String> {
        let catalog = entries(catalog, "built-in catalog: ")?;
        let user = entries(user, "")?;
        for e in &user {
            let builtin = e.stage.builtins().iter().any(|(name, _)| *name == e.engine);
            if builtin && e.model.is_some() {
                return Err(format!("speech entry for the built-in engine {:?} takes no model", e.engine));
            }
            if !builtin && !is_vendor(e.stage, &e.engine) {
                let builtins: Vec<&str> = e.stage.builtins().iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "speech entry with {} names engine {:?}, which is neither a configured [providers] vendor that does {} (add [providers.NAME] or set its key variable) nor a built-in engine ({})",
                    e.stage.price_field(),
                    e.engine,
                    match e.stage {
                        Stage::Stt => "speech-to-text",
                        Stage::Tts => "text-to-speech",
                    },
                    builtins.join(", ")
                ));
            }
        }
        Ok(PriceList { catalog, user })
    }

    fn find(list: &[Entry], stage: Stage, engine: &str, model: Option<&str>) -> Option<u64> {
        list.iter().find(|e| e.stage == stage && e.engine == engine && e.model.as_deref() == model).map(|e| e.price)
    }

    /// The user's price for `engine` (its model's, else the engine's without a model).
    fn user_price(&self, stage: Stage, engine: &str, model: Option<&str>) -> Option<u64> {
        model.and_then(|m| Self::find(&self.user, stage, engine, Some(m))).or_else(|| Self::find(&self.user, stage, engine, None))
    }

    /// The price of vendor `provider_id` (of kind `kind`, as the catalog names vendors) serving
    /// `model`: the user's entry for the provider (its model's, else the provider's), else the
    /// catalog's for the vendor kind (the model's, else the kind's). `None` when nobody prices it.
    pub fn vendor_price(&self, stage: Stage, provider_id: &str, kind: &str, model: &str) -> Option<u64> {
        self.user_price(stage, provider_id, Some(model))
            .or_else(|| Self::find(&self.catalog, stage, kind, Some(model)))
            .or_else(|| Self::find(&self.catalog, stage, kind, None))
    }

    /// The catalog's entries, for tests and `voxgate models`: (stage, vendor, model, µUSD).
    pub fn catalog_entries(&self) -> impl Iterator<Item = (Stage, &str, Option<&str>, u64)> {
        self.catalog.iter().map(|e| (e.stage, e.engine.as_str(), e.model.as_deref(), e.price))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Prng;

    fn raw(engine: &str, model: Option<&str>, per_minute: Option<f64>, per_kchar: Option<f64>) -> RawSpeechPrice {
        RawSpeechPrice { engine: engine.into(), model: model.map(Into::into), usd_per_audio_minute: per_minute, usd_per_kchar: per_kchar }
    }

    fn vendors(stage: Stage, engine: &str) -> bool {
        matches!((stage, engine), (Stage::Stt, "dg") | (Stage::Tts, "eleven"))
    }

    #[test]
    fn prices_are_whole_micro_dollars_or_a_clear_error() {
        assert_eq!(microusd(0.0077, "p"), Ok(7_700));
        assert_eq!(microusd(0.0025, "p"), Ok(2_500));
        assert_eq!(microusd(0.05, "p"), Ok(50_000));
        assert_eq!(microusd(0.0, "p"), Ok(0));
        assert_eq!(microusd(123.456789, "p"), Ok(123_456_789));
        for bad in [-0.001, f64::NAN, f64::INFINITY, 1e7] {
            let e = microusd(bad, "speech[0].usd_per_kchar").unwrap_err();
            assert!(e.contains("speech[0].usd_per_kchar") && e.contains("0 or more"), "{e}");
        }
        let e = microusd(0.00000015, "x").unwrap_err();
        assert!(e.contains("more than six decimals"), "{e}");
    }

    #[test]
    fn stt_cost_is_rounded_to_the_nearest_picodollar_and_tts_cost_is_exact() {
        // Deepgram at $0.0077/min: one minute is exactly $0.0077.
        assert_eq!(stt_cost_picousd(60_000, 7_700), 7_700_000_000);
        // One second: 7700/60 µUSD = 128.333… µUSD → 128 333 333.33 pUSD → 128 333 333.
        assert_eq!(stt_cost_picousd(1_000, 7_700), 128_333_333);
        // 2 ms at 1 µUSD/min = 33.33 pUSD; 3 ms = 50 exactly; 1 ms = 16.67 → 17; 3 ms at 10 = 500.
        assert_eq!(stt_cost_picousd(2, 1), 33);
        assert_eq!(stt_cost_picousd(3, 1), 50);
        assert_eq!(stt_cost_picousd(1, 1), 17);
        // The exact value is ms·price·50/3 pUSD: its fraction is 0, ⅓ or ⅔, so no tie ever occurs.
        assert_eq!(stt_cost_picousd(1, 3), 50);
        assert_eq!(stt_cost_picousd(3, 10), 500);
        assert_eq!(stt_cost_picousd(0, 7_700), 0);
        assert_eq!(stt_cost_picousd(u64::MAX, u64::MAX), u64::MAX, "saturates, never wraps");
        // ElevenLabs flash at $0.05 per 1000 characters: 1234 characters cost $0.0617.
        assert_eq!(tts_cost_picousd(1_234, 50_000), 61_700_000_000);
        assert_eq!(tts_cost_picousd(1, 1), 1_000);
        assert_eq!(tts_cost_picousd(u64::MAX, 2), u64::MAX);
    }

    #[test]
    fn stt_cost_matches_exact_rationals_and_totals_are_priced_once() {
        let mut rng = Prng(0x5eec_4c05);
        for _ in 0..20_000 {
            let ms = rng.below_u64(10_000_000);
            let price = rng.below_u64(1_000_000);
            let c = stt_cost_picousd(ms, price) as u128;
            // c - 1/2 <= ms·price·10⁶/60000 < c + 1/2, in integers.
            let exact_x2 = 2 * ms as u128 * price as u128 * 1_000_000;
            assert!(exact_x2 < (2 * c + 1) * 60_000, "{ms} {price} → {c}");
            assert!(c == 0 || (2 * c - 1) * 60_000 <= exact_x2, "{ms} {price} → {c}");
            // Monotonic in the audio.
            assert!(stt_cost_picousd(ms + 1 + rng.below_u64(1000), price) as u128 >= c);
        }
        // A session's utterances add up before the cost is taken: one rounding, not one per utterance.
        let mut usage = SpeechUsage::default();
        for _ in 0..3 {
            usage.add(Stage::Stt, "dg", 1, Some(1));
        }
        usage.add(Stage::Tts, "eleven", 10, Some(50_000));
        usage.add(Stage::Tts, "eleven", 5, Some(50_000));
        usage.add(Stage::Tts, "mystery", 7, None);
        let lines = usage.lines();
        assert_eq!(lines.len(), 3);
        assert_eq!((lines[0].stage, lines[0].engine.as_str(), lines[0].quantity, lines[0].cost_picousd), (Stage::Stt, "dg", 3, 50));
        assert_eq!(3 * stt_cost_picousd(1, 1), 51, "per-utterance rounding would have drifted");
        assert_eq!((lines[1].engine.as_str(), lines[1].quantity, lines[1].cost_picousd), ("eleven", 15, 750_000_000));
        assert_eq!((lines[2].engine.as_str(), lines[2].price_microusd, lines[2].cost_picousd), ("mystery", None, 0));
        assert_eq!(stage_cost_picousd(&lines, Stage::Tts), 750_000_000);
        assert_eq!(stage_cost_picousd(&lines, Stage::Stt), 50);
    }

    #[test]
    fn user_entries_lay_over_the_catalog_and_builtins_cost_nothing_unless_priced() {
        let catalog = [
            raw("deepgram", Some("nova-3"), Some(0.0077), None),
            raw("deepgram", None, Some(0.01), None),
            raw("elevenlabs", Some("eleven_flash_v2_5"), None, Some(0.05)),
        ];
        let list = PriceList::from_raw(&catalog, &[], &vendors).unwrap();
        assert_eq!(list.vendor_price(Stage::Stt, "dg", "deepgram", "nova-3"), Some(7_700));
        assert_eq!(list.vendor_price(Stage::Stt, "dg", "deepgram", "nova-2"), Some(10_000), "the vendor's entry without a model");
        assert_eq!(list.vendor_price(Stage::Tts, "eleven", "elevenlabs", "eleven_v3"), None, "nobody prices it");
        let prices = SpeechPrices::with_builtins(&list);
        assert_eq!(prices.price(Stage::Stt, "fake"), Some(0));
        assert_eq!(prices.price(Stage::Tts, "espeak-ng"), Some(0));
        assert_eq!(prices.price(Stage::Stt, "whisper-tiny-en"), Some(0));
        assert_eq!(prices.price(Stage::Stt, "unknown"), None);

        let user = [
            raw("dg", Some("nova-3"), Some(0.0065), None),
            raw("dg", None, Some(0.02), None),
            raw("fake", None, Some(0.5), None),
            raw("fake", None, None, Some(0.25)),
        ];
        let list = PriceList::from_raw(&catalog, &user, &vendors).unwrap();
        assert_eq!(list.vendor_price(Stage::Stt, "dg", "deepgram", "nova-3"), Some(6_500), "the user's model entry wins");
        assert_eq!(list.vendor_price(Stage::Stt, "dg", "deepgram", "nova-2"), Some(20_000), "then the user's provider entry");
        assert_eq!(list.vendor_price(Stage::Stt, "other", "deepgram", "nova-3"), Some(7_700), "another provider keeps the list price");
        let prices = SpeechPrices::with_builtins(&list);
        assert_eq!(prices.price(Stage::Stt, "fake"), Some(500_000));
        assert_eq!(prices.price(Stage::Tts, "fake"), Some(250_000));
        assert_eq!(prices.price(Stage::Tts, "espeak-ng"), Some(0));
    }

    #[test]
    fn bad_entries_are_refused_with_a_clear_error() {
        let cases: Vec<(Vec<RawSpeechPrice>, &str)> = vec![
            (vec![raw("dg", None, None, None)], "needs usd_per_audio_minute"),
            (vec![raw("dg", None, Some(0.1), Some(0.1))], "not both"),
            (vec![raw("", None, Some(0.1), None)], "engine is empty"),
            (vec![raw("dg", Some(""), Some(0.1), None)], "model is empty"),
            (vec![raw("dg", None, Some(-1.0), None)], "usd_per_audio_minute = -1"),
            (vec![raw("dg", Some("a"), Some(0.1), None), raw("dg", Some("a"), Some(0.2), None)], "priced twice"),
            (vec![raw("nobody", None, Some(0.1), None)], "names engine \"nobody\""),
            (vec![raw("dg", None, None, Some(0.1))], "does text-to-speech"),
            (vec![raw("espeak", None, Some(0.1), None)], "built-in engine (embedded, fake)"),
            (vec![raw("fake", Some("m"), Some(0.1), None)], "takes no model"),
        ];
        for (user, want) in cases {
            let e = PriceList::from_raw(&[], &user, &vendors).unwrap_err();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
    }
}
