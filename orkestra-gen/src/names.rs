//! Identifier sanitising, in one place: no template decides a name or an escape.

use heck::{ToPascalCase, ToShoutySnakeCase, ToSnakeCase};

/// Rust keywords (all editions) and reserved words.
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try",
];

/// Keywords that cannot be raw identifiers; they get a trailing underscore instead.
const NOT_RAW: &[&str] = &["crate", "self", "Self", "super", "_"];

/// Whether `name` is a plain identifier: an ASCII letter, then letters, digits or `_`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `word` as a usable Rust identifier: a keyword becomes a raw identifier (`r#type`),
/// or gets a trailing `_` where raw identifiers are not allowed (`self_`).
pub fn ident(word: &str) -> String {
    if NOT_RAW.contains(&word) {
        format!("{word}_")
    } else if KEYWORDS.contains(&word) {
        format!("r#{word}")
    } else {
        word.to_owned()
    }
}

/// A field or function name: snake_case, sanitised.
pub fn snake(name: &str) -> String {
    ident(&name.to_snake_case())
}

/// A type, trait or variant name: PascalCase, sanitised.
pub fn pascal(name: &str) -> String {
    ident(&name.to_pascal_case())
}

/// A constant name: SHOUTY_SNAKE_CASE.
pub fn shouty(name: &str) -> String {
    ident(&name.to_shouty_snake_case())
}

/// A Rust string literal for `s`: quotes, backslashes, control and bidi characters
/// escaped, so no schema text can end the literal or hide code.
pub fn str_lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bidirectional controls and other invisible formatting characters (Trojan Source).
fn is_invisible(c: char) -> bool {
    matches!(c as u32, 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2069 | 0xFEFF | 0x061C)
}

/// `#[doc = "..."]` attributes for a description, one per line.
///
/// prettyplease prints doc attributes as `///` comments with the literal's value, so
/// control and invisible characters are written out as visible `\u{..}` text first: a
/// raw bidi control in a comment would be denied by rustc (and could hide code).
pub fn doc_attrs(text: &str) -> String {
    text.lines()
        .map(|line| {
            let visible: String = line
                .trim_end()
                .chars()
                .map(|c| {
                    if c.is_control() || is_invisible(c) {
                        format!("\\u{{{:x}}}", c as u32)
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            format!("#[doc = {}]", str_lit(&format!(" {visible}")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_become_raw_identifiers() {
        assert_eq!(snake("type"), "r#type");
        assert_eq!(snake("match"), "r#match");
        assert_eq!(snake("self"), "self_");
        assert_eq!(snake("productId"), "product_id");
        assert_eq!(pascal("place_order"), "PlaceOrder");
        assert_eq!(pascal("Self"), "Self_");
        assert_eq!(shouty("PlaceOrder"), "PLACE_ORDER");
    }

    #[test]
    fn literals_cannot_escape() {
        let nasty = "a\"b\\c*/\n`d`\u{202e}e\u{2066}";
        let lit = str_lit(nasty);
        assert_eq!(lit, r#""a\"b\\c*/\n`d`\u{202e}e\u{2066}""#);
        let parsed: syn::LitStr = syn::parse_str(&lit).unwrap();
        assert_eq!(parsed.value(), nasty);
    }
}
