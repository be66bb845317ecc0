//! Who may reach the server from a web page. WebSockets and "simple" POSTs are not held back by
//! CORS, so a page on any site could otherwise open `ws://127.0.0.1:8080/v1/realtime` in its
//! visitor's browser and spend the operator's hosted keys. Two checks run before any handler:
//! - `Origin`, which browsers send and cannot forge: a request that carries one must come from the
//!   server's own pages (the origin's host and port are the request's `Host` or
//!   `X-Forwarded-Host`) or from an origin in `[server] allowed_origins`. Clients without an
//!   `Origin` (SDKs, curl, Twilio) are not browsers and pass.
//! - `Host`, on a loopback listener only: it must be a loopback name or address with the listener's
//!   port (`localhost:8080`, `127.0.0.1:8080`, `[::1]:8080`), or a name in `[server] allowed_hosts`
//!   (a TLS proxy on the same machine that passes its public `Host` through). A page on
//!   `evil.example` that DNS rebinding points at 127.0.0.1 is its own origin, so only the `Host` it
//!   sends gives it away.
//!
//! Both refusals are 403 with an OpenAI error object (`origin_not_allowed`, `host_not_allowed`).

use std::net::IpAddr;

use axum::http::{header, HeaderMap, StatusCode};

use super::error::ApiError;
use crate::config::EdgeSettings;

/// `scheme://host[:port]` lowercased, without the scheme's default port; `None` when `text` is not
/// an http(s) origin (a path, a query, userinfo or an empty host).
pub fn normalize_origin(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('/').unwrap_or(&text);
    let (scheme, authority) = text.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let (host, port) = split_host_port(authority)?;
    let default = if scheme == "https" { 443 } else { 80 };
    Some(match port {
        Some(p) if p != default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` (`[v6]:port` for IPv6) into a host (brackets kept) and the port; `None` when it
/// holds anything an authority in an `Origin` or `Host` header cannot.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.is_empty() || authority.len() > 255 {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().ok()?;
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let name_ok = host.starts_with('[') || (!host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !name_ok {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// Whether a request with these headers may go on: the 403 to answer if not. `loopback_port` is
/// the listener's port when it listens on a loopback address (`Some(0)`: loopback, port unknown).
#[allow(clippy::result_large_err)]
pub fn check(edge: &EdgeSettings, loopback_port: Option<u16>, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(port) = loopback_port {
        if !host.is_some_and(|h| is_loopback_host(h, port) || allowed_host(&edge.allowed_hosts, h)) {
            let shown: String = host.unwrap_or("").chars().take(80).collect();
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                format!(
                    "Host {shown:?} is not this server: it listens on a loopback address and answers only to localhost, 127.0.0.1 or [::1] with its port, and to the names in [server] allowed_hosts."
                ),
            )
            .code("host_not_allowed"));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    if edge.any_origin {
        return Ok(());
    }
    let origin_text = origin.to_str().unwrap_or("");
    if let Some(origin) = normalize_origin(origin_text) {
        let forwarded = headers.get("x-forwarded-host").and_then(|h| h.to_str().ok());
        let same = [host, forwarded].into_iter().flatten().any(|h| same_origin(&origin, h));
        if same || edge.allowed_origins.contains(&origin) {
            return Ok(());
        }
    }
    let shown: String = origin_text.chars().take(80).collect();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        format!("Requests from web pages at {shown:?} are not allowed: only this server's own pages and the origins in [server] allowed_origins may use it from a browser."),
    )
    .code("origin_not_allowed"))
}

/// `origin` (normalised) is the site `host` (a `Host` header) names: same host and port.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, _)) = origin.split_once("://") else { return false };
    normalize_origin(&format!("{scheme}://{host}")).is_some_and(|h| h == origin)
}

/// `host` is one of `allowed` (`name`: any port; `name:port`: that port).
fn allowed_host(allowed: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let Some((name, _)) = split_host_port(&host) else { return false };
    allowed.iter().any(|a| *a == host || *a == name)
}

/// Lowercase `name` or `name:port` for `[server] allowed_hosts`; `None` when it is not one.
pub fn normalize_host(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_lowercase();
    split_host_port(&text)?;
    Some(text)
}

/// `localhost`, a loopback IP, with `port` (absent means 80); any port when `port` is 0.
fn is_loopback_host(host: &str, port: u16) -> bool {
    let lower = host.to_ascii_lowercase();
    let Some((name, given)) = split_host_port(&lower) else { return false };
    let name_ok = name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() && (name.starts_with('[') || ip.is_ipv4()));
    name_ok && (port == 0 || given.unwrap_or(80) == port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalise_or_are_refused() {
        assert_eq!(normalize_origin("HTTPS://App.Example.com/").as_deref(), Some("https://app.example.com"));
        assert_eq!(normalize_origin("https://a.example:443").as_deref(), Some("https://a.example"));
        assert_eq!(normalize_origin("http://127.0.0.1:8080").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(normalize_origin("http://[::1]:8080").as_deref(), Some("http://[::1]:8080"));
        for bad in [
            "null",
            "app.example.com",
            "ftp://a.example",
            "https://a.example/path",
            "https://u@a.example",
            "https://",
            "https://a:99999",
            "https://[zz]:1",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "127.1.2.3:8080"] {
            assert!(is_loopback_host(ok, 8080), "{ok}");
        }
        for bad in ["evil.example:8080", "127.0.0.1:8081", "127.0.0.1", "10.0.0.1:8080", "localhost.evil.example:8080", "::1:8080", ""] {
            assert!(!is_loopback_host(bad, 8080), "{bad}");
        }
        assert!(is_loopback_host("localhost", 80));
        let allowed = vec!["voice.example.com".to_string(), "other.example:8443".to_string()];
        assert!(allowed_host(&allowed, "Voice.Example.com:443") && allowed_host(&allowed, "other.example:8443"));
        assert!(!allowed_host(&allowed, "other.example:9000") && !allowed_host(&allowed, "evil.example"));
    }

    #[test]
    fn same_origin_follows_the_host() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("https://voice.example.com", "voice.example.com"));
        assert!(same_origin("https://voice.example.com", "voice.example.com:443"));
        assert!(!same_origin("http://evil.example:8080", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8081", "127.0.0.1:8080"));
    }
}
