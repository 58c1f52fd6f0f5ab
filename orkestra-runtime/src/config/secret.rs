//! [`SecretUrl`]: a URL whose password never reaches a log or an error.

use std::fmt;

/// A URL or connection string that may hold a password. `Debug` and `Display` show it with
/// the password replaced by `***`; [`SecretUrl::expose`] gives the real text to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for handing to a driver. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Hides passwords in `scheme://user:password@host` URLs, in `password=` query or
/// key-value parameters, and in anything after an `@` we cannot parse.
pub(crate) fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    match userinfo.split_once(':') {
                        Some((user, _)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            tail
        }
        None => url,
    };
    // key=value parameters: `?password=x&…` or libpq's `password=x host=…`.
    for part in rest.split_inclusive(['&', ' ', ';', '?']) {
        let (body, sep) = match part.char_indices().last() {
            Some((i, c)) if "& ;?".contains(c) => (&part[..i], &part[i..]),
            _ => (part, ""),
        };
        match body.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("pass") =>
            {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(body),
        }
        out.push_str(sep);
    }
    out
}
