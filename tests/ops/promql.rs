//! The metric names a PromQL expression reads. Not a parser (promtool checks the syntax):
//! a scan that skips strings, label matchers, ranges, numbers, comments and Grafana's
//! `$variables`, then sorts the identifiers left into functions and aggregations
//! (followed by `(`, `by` or `without`),
//! keywords, grouping label lists (`by (..)`, `on (..)`) and metric names.

use std::collections::BTreeSet;

/// Binary operators and modifiers spelled as words.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];

/// Words followed by a list of label names in parentheses (optional after `group_*`).
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal opening at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string opened at offset {start}"))
}

/// The index just past the `close` that ends the group opening at `start`, strings
/// inside skipped.
fn skip_group(chars: &[char], start: usize, close: char) -> Result<usize, String> {
    let open = chars[start];
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i)?;
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("`{open}` at offset {start} is never closed"))
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// What a query reads.
#[derive(Debug, Default, PartialEq)]
pub struct Reads {
    /// Every metric name it selects.
    pub metrics: BTreeSet<String>,
    /// The label names each selector matches on, by metric (`None`: `{..}` alone).
    pub matchers: Vec<(Option<String>, Vec<String>)>,
    /// The label names of its `by`, `without`, `on`, `ignoring` and `group_*` lists.
    pub grouping: BTreeSet<String>,
}

/// The label names of the matchers `{a="x", b=~"y"}` opening at `start`, and the
/// index past the `}`.
fn matcher_labels(chars: &[char], start: usize) -> Result<(Vec<String>, usize), String> {
    let mut labels = Vec::new();
    let mut i = skip_space(chars, start + 1);
    loop {
        match chars.get(i) {
            Some('}') => return Ok((labels, i + 1)),
            Some(&c) if ident_start(c) => {
                let name_start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                labels.push(chars[name_start..i].iter().collect());
                i = skip_space(chars, i);
                while matches!(chars.get(i), Some('=' | '!' | '~')) {
                    i += 1;
                }
                i = skip_space(chars, i);
                if !matches!(chars.get(i), Some('"' | '\'' | '`')) {
                    return Err(format!("a matcher without a quoted value at offset {i}"));
                }
                i = skip_space(chars, skip_string(chars, i)?);
                if chars.get(i) == Some(&',') {
                    i = skip_space(chars, i + 1);
                }
            }
            _ => {
                return Err(format!(
                    "the matchers opened at offset {start} are not `name op \"value\"`"
                ));
            }
        }
    }
}

/// What `expr` reads: metric names, the labels its selectors match and its grouping
/// labels.
pub fn reads(expr: &str) -> Result<Reads, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut reads = Reads::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i)?;
        } else if c == '{' {
            let (labels, end) = matcher_labels(&chars, i)?;
            reads.matchers.push((None, labels));
            i = end;
        } else if c == '[' {
            i = skip_group(&chars, i, ']')?;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '}')?;
            } else {
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.05`, `5m`, `1e3`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(&chars, i);
            let followed_by = |w: &str| {
                chars[next..].starts_with(&w.chars().collect::<Vec<_>>())
                    && !chars.get(next + w.len()).copied().is_some_and(ident_char)
            };
            if LABEL_LISTS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    let end = skip_group(&chars, next, ')')?;
                    let list: String = chars[next + 1..end - 1].iter().collect();
                    reads.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = end;
                }
            } else if KEYWORDS.contains(&word.as_str())
                || chars.get(next) == Some(&'(')
                || followed_by("by")
                || followed_by("without")
            {
                // An operator, or a function or aggregation (`sum by (..) (..)`) applied
                // to what follows.
            } else {
                if chars.get(next) == Some(&'{') {
                    let (labels, end) = matcher_labels(&chars, next)?;
                    reads.matchers.push((Some(word.clone()), labels));
                    i = end;
                }
                reads.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(reads)
}

/// Every metric name `expr` selects.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    reads(expr).map(|r| r.metrics)
}
