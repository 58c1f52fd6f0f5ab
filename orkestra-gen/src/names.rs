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

// Exports (AsyncAPI, JSON Schema, the documentation site): every string a schema author
// wrote reaches JSON, YAML, HTML and SVG through one of these, never raw.

/// A JSON string literal: quotes, backslashes, control and invisible characters escaped,
/// and `<`, `>`, `&` as `\u00XX` so the JSON stays inert inside an HTML `<script>` or page.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible(c) || matches!(c, '<' | '>' | '&') => {
                // All of them are in the Basic Multilingual Plane: one `\uXXXX` each.
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON string literal for a person to read in a page: quotes, backslashes and control
/// characters escaped, nothing else. Only for text that then goes through [`html`].
pub fn json_str_readable(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML scalar for `s`, always double-quoted (so no value is read as a number, a
/// boolean, an alias or a comment), with the same escapes as [`json_str`]: a YAML
/// 1.2 double-quoted scalar accepts every JSON escape.
pub fn yaml_str(s: &str) -> String {
    json_str(s)
}

/// A YAML mapping key: bare when it is a plain word (`payload`, `x-orkestra-queue`,
/// `orders.commands.place_order`), else double-quoted.
pub fn yaml_key(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    // YAML 1.1 readers take these words as booleans or null, even as keys.
    let reserved = matches!(
        s.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
    );
    if plain && !reserved {
        s.to_owned()
    } else {
        yaml_str(s)
    }
}

/// Text for HTML and SVG (XML) content and attribute values: `& < > " '` as entities,
/// and control and invisible characters (bidi overrides) written out as visible
/// `\u{..}` text, because an entity would still reorder what the reader sees.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() || is_invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A file name (and URL path segment) for a page or schema: ASCII letters, digits, `.`,
/// `-` and `_` kept, anything else as `_`, so no name can leave its directory.
pub fn file_stem(s: &str) -> String {
    let stem: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // `..` or a leading dot would be a relative path or a hidden file.
    stem.trim_start_matches('.').replace("..", "_")
}

/// An AsyncAPI component key (`^[a-zA-Z0-9.\-_]+$`) for a topic or name.
pub fn component_key(s: &str) -> String {
    let key = file_stem(s);
    if key.is_empty() { "_".to_owned() } else { key }
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

    #[test]
    fn export_strings_cannot_escape() {
        let nasty = "a\"b\\c*/\n<script>alert(1)</script>'\u{202e}&";
        let json = json_str(nasty);
        assert_eq!(
            json,
            r#""a\"b\\c*/\n\u003cscript\u003ealert(1)\u003c/script\u003e'\u202e\u0026""#
        );
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nasty, "the JSON string round-trips");
        let readable = json_str_readable(nasty);
        assert!(
            readable.contains("<script>"),
            "readable JSON leaves markup to `html`"
        );
        let back: String = serde_json::from_str(&readable).unwrap();
        assert_eq!(back, nasty);
        assert_eq!(
            html(nasty),
            "a&quot;b\\c*/\n&lt;script&gt;alert(1)&lt;/script&gt;&#39;\\u{202e}&amp;"
        );
        assert_eq!(yaml_key("orders.commands.x"), "orders.commands.x");
        assert_eq!(yaml_key("a: b"), "\"a: b\"");
        assert_eq!(yaml_key("true1"), "true1");
        assert_eq!(yaml_key("on"), "\"on\"");
        assert_eq!(file_stem("../x/ y"), "_x__y");
        assert_eq!(
            file_stem("Shop.Orders.PlaceOrder"),
            "Shop.Orders.PlaceOrder"
        );
    }
}
