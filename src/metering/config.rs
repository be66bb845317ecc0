//! `[metering]`: where the durable ledger lives, how often it checkpoints, and the flat session
//! rate, as written in the config file ([`RawMetering`]) and validated ([`MeteringSettings`]).

use std::path::PathBuf;

use serde::Deserialize;

/// `[metering]`: the durable ledger and the flat session rate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetering {
    /// The SQLite ledger file (default `voxgate-data/ledger.sqlite`, or `$VOXGATE_LEDGER`); created if missing.
    pub ledger: Option<PathBuf>,
    /// How often open sessions are written down (default 5000): a crash bills at most this much short.
    pub checkpoint_ms: Option<u64>,
    /// The flat rate of a voice session, in USD per hour (default 4.50); a key may have its own.
    pub rate_usd_per_hour: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MeteringSettings {
    pub ledger: PathBuf,
    /// Records the ledger cannot write go here (JSON lines) until it can: `ledger` + `.fallback.jsonl`.
    pub fallback: PathBuf,
    pub checkpoint_ms: u64,
    pub rate_microusd_per_hour: u64,
}

impl MeteringSettings {
    /// Validates `[metering]` (`env` reads `VOXGATE_LEDGER`); an error is a message for the
    /// config's `Invalid` error.
    pub fn from_raw(raw: &RawMetering, env: &dyn Fn(&str) -> Option<String>) -> Result<MeteringSettings, String> {
        let ledger = raw
            .ledger
            .clone()
            .or_else(|| env("VOXGATE_LEDGER").filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("voxgate-data/ledger.sqlite"));
        let mut fallback = ledger.clone().into_os_string();
        fallback.push(".fallback.jsonl");
        if raw.checkpoint_ms == Some(0) {
            return Err("metering.checkpoint_ms = 0 is not allowed; leave it out for the default (5000)".into());
        }
        let usd = raw.rate_usd_per_hour.unwrap_or(4.5);
        let rate_microusd_per_hour = super::billing::rate_microusd_per_hour(usd)
            .ok_or_else(|| format!("metering.rate_usd_per_hour = {usd} is not a price in USD per hour"))?;
        Ok(MeteringSettings {
            ledger,
            fallback: PathBuf::from(fallback),
            checkpoint_ms: raw.checkpoint_ms.unwrap_or(5_000),
            rate_microusd_per_hour,
        })
    }
}
