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

/// Hides passwords wherever they can be in `text` (a URL, a connection string, or an
/// error message that quotes one): the userinfo password of every `scheme://` URL (up
/// to the URL's last `@`, so a password holding `/`, `?`, `#` or `@` is hidden whole),
/// and `password=` / `pass=` key-value parameters.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, url_and_tail) = rest.split_at(at + 3);
        out.push_str(head);
        // A URL runs to the next whitespace or quoting character.
        let end = url_and_tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(url_and_tail.len());
        let (url, tail) = url_and_tail.split_at(end);
        match url.rsplit_once('@') {
            // Everything before the last `@` is userinfo; hide all after its first `:`.
            // (An `@` in a path or query makes this hide more than needed, never less.)
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***@");
                    out.push_str(host);
                }
                None => out.push_str(url),
            },
            None => out.push_str(url),
        }
        rest = tail;
    }
    out.push_str(rest);
    redact_parameters(&out)
}

/// `?password=x&…` or libpq's `password=x host=…`.
fn redact_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let rest = text;
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
