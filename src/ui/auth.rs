//! Who may use the dashboard: the pure checks, kept apart from the server so that they
//! are tested without sockets.
//!
//! - The token: 32 random bytes (hex in the URL `cnspr ui` prints). A request carries it
//!   as `?token=` (first visit) or in the `cnspr_ui` cookie (`HttpOnly`,
//!   `SameSite=Strict`); it is compared in constant time (an HMAC verification).
//! - `Host` must name the loopback address and port the server listens on, so that a
//!   DNS-rebinding page (a hostile name resolving to 127.0.0.1) is refused.
//! - A state-changing request is a `POST` with the cookie, the `X-CNSPR-CSRF` header
//!   holding the CSRF value (given only inside the authenticated page), and an `Origin`
//!   equal to the server's own.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The cookie's name.
pub const COOKIE: &str = "cnspr_ui";
/// The request header that carries the CSRF value.
pub const CSRF_HEADER: &str = "x-cnspr-csrf";
/// Longest query string or cookie header looked at, in bytes.
const MAX_FIELD: usize = 8 * 1024;

/// The secrets of one dashboard server (one per daemon run).
pub struct Keys {
    token: String,
    csrf: String,
    /// Key of the HMACs that compare secrets in constant time.
    key: hmac::Key,
    token_tag: hmac::Tag,
    csrf_tag: hmac::Tag,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn random_hex(rng: &SystemRandom) -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    rng.fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
    Ok(data_encoding::HEXLOWER.encode(&b))
}

impl Keys {
    pub fn generate() -> anyhow::Result<Keys> {
        let rng = SystemRandom::new();
        let token = random_hex(&rng)?;
        let csrf = random_hex(&rng)?;
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
        let token_tag = hmac::sign(&key, token.as_bytes());
        let csrf_tag = hmac::sign(&key, csrf.as_bytes());
        Ok(Keys {
            token,
            csrf,
            key,
            token_tag,
            csrf_tag,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// True when `candidate` is the token (constant time in its content).
    pub fn is_token(&self, candidate: &str) -> bool {
        hmac::verify(&self.key, candidate.as_bytes(), self.token_tag.as_ref()).is_ok()
    }

    pub fn is_csrf(&self, candidate: &str) -> bool {
        hmac::verify(&self.key, candidate.as_bytes(), self.csrf_tag.as_ref()).is_ok()
    }

    /// The `Set-Cookie` value given after a visit with the token.
    pub fn cookie(&self) -> String {
        format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", self.token)
    }

    /// True when the `Cookie` header holds the token.
    pub fn cookie_ok(&self, header: Option<&str>) -> bool {
        header
            .filter(|h| h.len() <= MAX_FIELD)
            .and_then(|h| cookie_value(h, COOKIE))
            .is_some_and(|v| self.is_token(v))
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The decoded value of parameter `name` in a query string (`a=1&b=x%2Fy`); `None` when
/// absent, too long or not valid percent-encoded UTF-8.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let q = query.filter(|q| q.len() <= MAX_FIELD)?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k == name {
            percent_decode(v)
        } else {
            None
        }
    })
}

/// Decodes `%XX` escapes and `+` (a space, as forms encode it).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// True when `Host` names this server by a loopback address or `localhost` and its port.
pub fn host_ok(host: Option<&str>, port: u16) -> bool {
    let Some(host) = host else {
        return false;
    };
    ["127.0.0.1", "[::1]", "localhost"]
        .iter()
        .any(|h| host.eq_ignore_ascii_case(&format!("{h}:{port}")))
}

/// True when `Origin` is this server as reached through `host` (already checked by
/// [`host_ok`]): a page of another origin, `null` or no `Origin` at all is refused.
pub fn origin_ok(origin: Option<&str>, host: &str) -> bool {
    origin.is_some_and(|o| o.eq_ignore_ascii_case(&format!("http://{host}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_csrf_are_random_and_checked() {
        let a = Keys::generate().unwrap();
        let b = Keys::generate().unwrap();
        assert_eq!(a.token().len(), 64);
        assert_ne!(a.token(), b.token());
        assert_ne!(a.token(), a.csrf());
        assert!(a.is_token(a.token()));
        assert!(!a.is_token(b.token()));
        assert!(!a.is_token(""));
        assert!(!a.is_token(&a.token()[..63]));
        assert!(!a.is_token(a.csrf()));
        assert!(a.is_csrf(a.csrf()));
        assert!(!a.is_csrf(a.token()));
    }

    #[test]
    fn cookie_is_http_only_and_strict() {
        let k = Keys::generate().unwrap();
        let c = k.cookie();
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        let header = format!("other=1; {COOKIE}={}; x=y", k.token());
        assert!(k.cookie_ok(Some(&header)));
        assert!(!k.cookie_ok(Some("cnspr_ui=00")));
        assert!(!k.cookie_ok(Some(&format!("x{COOKIE}={}", k.token()))));
        assert!(!k.cookie_ok(None));
    }

    #[test]
    fn host_and_origin_checks() {
        assert!(host_ok(Some("127.0.0.1:8123"), 8123));
        assert!(host_ok(Some("[::1]:8123"), 8123));
        assert!(host_ok(Some("LOCALHOST:8123"), 8123));
        assert!(!host_ok(Some("127.0.0.1:8124"), 8123));
        assert!(!host_ok(Some("evil.example:8123"), 8123));
        assert!(!host_ok(Some("127.0.0.1"), 8123));
        assert!(!host_ok(None, 8123));
        assert!(origin_ok(Some("http://127.0.0.1:8123"), "127.0.0.1:8123"));
        assert!(!origin_ok(Some("http://127.0.0.2:8123"), "127.0.0.1:8123"));
        assert!(!origin_ok(Some("null"), "127.0.0.1:8123"));
        assert!(!origin_ok(None, "127.0.0.1:8123"));
    }

    #[test]
    fn query_parameters_are_decoded_and_bounded() {
        assert_eq!(
            query_param(Some("a=1&prefix=x%2Fy+z"), "prefix").as_deref(),
            Some("x/y z")
        );
        assert_eq!(query_param(Some("a=1"), "prefix"), None);
        assert_eq!(query_param(Some("prefix=%zz"), "prefix"), None);
        assert_eq!(query_param(Some("prefix=%ff"), "prefix"), None);
        assert_eq!(query_param(Some("prefix"), "prefix").as_deref(), Some(""));
        let long = format!("prefix={}", "a".repeat(MAX_FIELD));
        assert_eq!(query_param(Some(&long), "prefix"), None);
    }
}
