//! `[auth]`: the gateway's API keys as written in the config file ([`RawAuth`], [`RawKey`]) and
//! validated ([`KeyConfig`]: a name, the key's SHA-256, an hourly rate and limits). `http::keys`
//! checks clients' keys against them.

use serde::Deserialize;

use super::ConfigError;
use crate::secret::Secret;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Gateway API keys clients send as `Authorization: Bearer …`; `env:NAME` reads a variable.
    /// Named `key-1`, `key-2`, … in usage, with no limits.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// `[[auth.keys]]`: named keys with an hourly rate and limits.
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Unique; letters, digits, `_`, `.` and `-`. Usage and the ledger are kept under it.
    pub name: String,
    /// `env:NAME` (read from the environment) or the key itself; hashed at load, never kept.
    #[serde(default, deserialize_with = "optional_secret")]
    pub key: Option<Secret>,
    /// The key's SHA-256 as 64 hex digits, so the plain key need not sit in the file.
    pub key_sha256: Option<String>,
    /// Price of a voice session per hour, in USD (billed per started second).
    pub rate_usd_per_hour: Option<f64>,
    /// Concurrent voice sessions (absent: unlimited).
    pub max_sessions: Option<u64>,
    /// Gateway requests per minute (absent: unlimited).
    pub requests_per_minute: Option<u64>,
    /// Gateway tokens (input + output) per minute (absent: unlimited).
    pub tokens_per_minute: Option<u64>,
    /// A revoked key is refused with `api_key_revoked` instead of `invalid_api_key`.
    #[serde(default)]
    pub revoked: bool,
}

/// A string read straight into a [`Secret`], so a literal key in the file never prints.
pub(super) fn optional_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Secret::new(String::deserialize(d)?)))
}

/// A validated API key: its name, the SHA-256 of the key (the key itself is not kept), its
/// hourly rate and its limits (`None`: unlimited).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
    pub rate_microusd_per_hour: Option<u64>,
    pub max_sessions: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub revoked: bool,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A short fingerprint is enough to tell keys apart in a log; the whole hash of a weak key
        // could be searched.
        let fingerprint: String = self.sha256[..4].iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("sha256", &format_args!("{fingerprint}…"))
            .field("rate_microusd_per_hour", &self.rate_microusd_per_hour)
            .field("max_sessions", &self.max_sessions)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("revoked", &self.revoked)
            .finish()
    }
}

/// The keys of both forms, hashed, with names and limits checked.
pub(super) fn key_configs(auth: &RawAuth, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<KeyConfig>, ConfigError> {
    let mut keys: Vec<KeyConfig> = Vec::new();
    for (i, k) in auth.api_keys.iter().enumerate() {
        let field = format!("auth.api_keys[{i}]");
        let sha256 = hash_key(&Secret::from_config(k, env, &field).map_err(ConfigError::Invalid)?, &field)?;
        keys.push(KeyConfig {
            name: format!("key-{}", i + 1),
            sha256,
            rate_microusd_per_hour: None,
            max_sessions: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            revoked: false,
        });
    }
    for (i, k) in auth.keys.iter().enumerate() {
        let name = &k.name;
        let valid_name =
            !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_name {
            return Err(ConfigError::Invalid(format!("auth.keys[{i}].name = {name:?} must be 1 to 64 letters, digits, `_`, `.` or `-`")));
        }
        let field = format!("auth.keys[{i}] ({name})");
        let sha256 = match (&k.key, &k.key_sha256) {
            (Some(key), None) => hash_key(
                &Secret::from_config(key.expose(), env, &format!("{field}.key")).map_err(ConfigError::Invalid)?,
                &format!("{field}.key"),
            )?,
            (None, Some(hex)) => parse_sha256(hex)
                .ok_or_else(|| ConfigError::Invalid(format!("{field}.key_sha256 must be 64 hex digits (the SHA-256 of the key)")))?,
            _ => return Err(ConfigError::Invalid(format!("{field} needs exactly one of `key` and `key_sha256`"))),
        };
        let rate_microusd_per_hour = match k.rate_usd_per_hour {
            None => None,
            Some(usd) => Some(crate::metering::billing::rate_microusd_per_hour(usd).ok_or_else(|| {
                ConfigError::Invalid(format!("{field}.rate_usd_per_hour = {usd} must be a price of 0 or more (USD per hour)"))
            })?),
        };
        let limit = |value: Option<u64>, what: &str| -> Result<Option<u64>, ConfigError> {
            match value {
                Some(0) => Err(ConfigError::Invalid(format!(
                    "{field}.{what} = 0 would refuse everything; leave it out for no limit, or set revoked = true"
                ))),
                v => Ok(v),
            }
        };
        let small = |value: Option<u64>, what: &str| -> Result<Option<u32>, ConfigError> {
            limit(value, what)?
                .map(|v| {
                    u32::try_from(v).map_err(|_| ConfigError::Invalid(format!("{field}.{what} = {v} is too large (at most {})", u32::MAX)))
                })
                .transpose()
        };
        keys.push(KeyConfig {
            name: name.clone(),
            sha256,
            rate_microusd_per_hour,
            max_sessions: small(k.max_sessions, "max_sessions")?,
            requests_per_minute: small(k.requests_per_minute, "requests_per_minute")?,
            tokens_per_minute: limit(k.tokens_per_minute, "tokens_per_minute")?,
            revoked: k.revoked,
        });
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some(other) = keys[..i].iter().find(|o| o.name == k.name) {
            return Err(ConfigError::Invalid(format!("two API keys are named {:?}; names must be unique", other.name)));
        }
        if let Some(other) = keys[..i].iter().find(|o| o.sha256 == k.sha256) {
            return Err(ConfigError::Invalid(format!(
                "API keys {:?} and {:?} are the same key; each key must be different",
                other.name, k.name
            )));
        }
    }
    Ok(keys)
}

/// The SHA-256 of a key as clients send it (trimmed, as bearer tokens are).
fn hash_key(key: &Secret, field: &str) -> Result<[u8; 32], ConfigError> {
    let key = key.expose().trim();
    if key.is_empty() {
        return Err(ConfigError::Invalid(format!("{field} is empty")));
    }
    Ok(sha256(key.as_bytes()))
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RawConfig};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn keys_of_both_forms_are_hashed_named_and_limited() {
        let hash_of_b: String = sha256(b"vk-b").iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            r#"
[auth]
api_keys = ["env:LEGACY"]
[[auth.keys]]
name = "team-a"
key = "env:TEAM_A"
rate_usd_per_hour = 0.12
max_sessions = 2
requests_per_minute = 60
tokens_per_minute = 100000
[[auth.keys]]
name = "team.b_2"
key_sha256 = "{}"
revoked = true
"#,
            hash_of_b.to_uppercase()
        );
        let env = |k: &str| match k {
            "LEGACY" => Some(" vk-legacy ".to_string()),
            "TEAM_A" => Some("vk-team-a-secret".to_string()),
            _ => None,
        };
        let c = Config::from_toml(&text, &env).unwrap();
        let names: Vec<&str> = c.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["key-1", "team-a", "team.b_2"]);
        assert_eq!(c.keys[0].sha256, sha256(b"vk-legacy"), "trimmed, as bearer tokens are");
        assert_eq!((c.keys[0].max_sessions, c.keys[0].requests_per_minute, c.keys[0].revoked), (None, None, false));
        let a = &c.keys[1];
        assert_eq!(a.sha256, sha256(b"vk-team-a-secret"));
        assert_eq!(a.rate_microusd_per_hour, Some(120_000));
        assert_eq!((a.max_sessions, a.requests_per_minute, a.tokens_per_minute), (Some(2), Some(60), Some(100_000)));
        assert_eq!((c.keys[2].sha256, c.keys[2].revoked), (sha256(b"vk-b"), true));
        let debug = format!("{c:?}");
        assert!(!debug.contains("vk-team-a-secret") && !debug.contains(&hash_of_b), "{debug}");

        // A literal key in the file works too and does not print in the raw config either.
        let raw: RawConfig = toml::from_str("[[auth.keys]]\nname = \"x\"\nkey = \"vk-literal-1\"\n").unwrap();
        assert!(!format!("{raw:?}").contains("vk-literal-1"));
        assert_eq!(Config::from_raw(raw, &no_env).unwrap().keys[0].sha256, sha256(b"vk-literal-1"));
    }

    #[test]
    fn bad_keys_are_clear_errors() {
        let err = |text: &str| Config::from_toml(text, &no_env).unwrap_err().to_string();
        let one = |body: &str| format!("[[auth.keys]]\nname = \"a\"\n{body}\n");
        assert!(err(&one("key = \"k\"\nrequests_per_minute = 0")).contains("requests_per_minute = 0"));
        assert!(err(&one("key = \"k\"\ntokens_per_minute = 0")).contains("tokens_per_minute = 0"));
        assert!(err(&one("key = \"k\"\nmax_sessions = 0")).contains("max_sessions = 0"));
        assert!(err(&one("key = \"k\"\nmax_sessions = 5000000000")).contains("too large"));
        assert!(err(&one("key = \"k\"\nrate_usd_per_hour = -1.0")).contains("rate_usd_per_hour"));
        assert!(err(&one("")).contains("exactly one of `key` and `key_sha256`"));
        let both = format!("key = \"k\"\nkey_sha256 = \"{}\"", "0".repeat(64));
        assert!(err(&one(&both)).contains("exactly one"));
        assert!(err(&one("key_sha256 = \"abc\"")).contains("64 hex digits"));
        assert!(err(&one(&format!("key_sha256 = \"{}\"", "g".repeat(64)))).contains("64 hex digits"));
        assert!(err(&one("key = \"   \"")).contains("is empty"));
        assert!(err(&one("key = \"env:NOPE\"")).contains("NOPE"));
        assert!(err(&one("key = \"k\"\nlimit = 3")).contains("limit"));
        assert!(err("[[auth.keys]]\nname = \"a b\"\nkey = \"k\"\n").contains("letters, digits"));
        assert!(err("[[auth.keys]]\nname = \"\"\nkey = \"k\"\n").contains("letters, digits"));
        let dup_name = "[[auth.keys]]\nname = \"a\"\nkey = \"k1\"\n[[auth.keys]]\nname = \"a\"\nkey = \"k2\"\n";
        assert!(err(dup_name).contains("named \"a\""));
        let dup_key = "[auth]\napi_keys = [\"k1\"]\n[[auth.keys]]\nname = \"a\"\nkey = \"k1\"\n";
        let e = err(dup_key);
        assert!(e.contains("same key") && e.contains("key-1") && !e.contains("\"k1\""), "{e}");
    }
}
