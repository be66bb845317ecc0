//! A secret value (an API key) that never prints itself: `Debug` and `Display` show a redaction.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// A secret as the config writes it: `env:NAME` reads the variable through `env` (an error
    /// names `field` and the variable, never a value); anything else is the secret itself.
    pub fn from_config(value: &str, env: &dyn Fn(&str) -> Option<String>, field: &str) -> Result<Secret, String> {
        match value.strip_prefix("env:") {
            Some(var) => env(var).map(Secret::new).ok_or_else(|| format!("{field} reads environment variable {var}, which is not set")),
            None => Ok(Secret::new(value)),
        }
    }

    /// The raw value, for building an upstream request header. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
