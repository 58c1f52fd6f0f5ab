//! Printing diagnostics: a miette box with the source snippet (human), or one
//! `file:line:col: error: ...` line (short, for editors and CI annotations). Each
//! diagnostic is printed once, in one of the two forms.

use std::ops::Range;

use orkestra_gen::compat::Change;
use orkestra_gen::{Diagnostic, Severity};

/// Prints one diagnostic to standard error.
pub fn print(d: &Diagnostic, human: bool) {
    let boxed = if human { snippet(d) } else { None };
    match boxed {
        Some(text) => eprintln!("{text}"),
        None => eprintln!("{d}"),
    }
}

/// The miette rendering of `d` with its source line, or `None` when the file cannot be
/// read again (then the one-line form is printed instead).
fn snippet(d: &Diagnostic) -> Option<String> {
    let text = std::fs::read_to_string(&d.span.file).ok()?;
    let label = label_range(&text, d.span.offset, d.span.line, d.span.column);
    let message = match d.rule {
        Some(rule) => format!("[{rule}] {}", d.message),
        None => d.message.clone(),
    };
    let mut md = miette::MietteDiagnostic::new(message)
        .with_severity(match d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
        .with_label(miette::LabeledSpan::at(label, "here"));
    if let Some(help) = &d.help {
        md = md.with_help(help.clone());
    }
    let source = miette::NamedSource::new(d.span.file.display().to_string(), text);
    let report = miette::Report::new(md).with_source_code(source);
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, report.as_ref())
        .ok()?;
    Some(out)
}

/// The byte range to underline in `text`: the word at the diagnostic's position.
///
/// The file was read again after validation and may have changed since, so the recorded
/// byte offset is used only when it is still a char boundary inside `text`; otherwise the
/// line and column are mapped again (clamped to the text). The range never ends past the
/// text nor inside a character.
fn label_range(text: &str, offset: Option<usize>, line: u64, column: u64) -> Range<usize> {
    let start = offset
        .filter(|&o| text.is_char_boundary(o))
        .unwrap_or_else(|| offset_of(text, line, column));
    let len: usize = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ':' | ',' | '}' | ']'))
        .map(char::len_utf8)
        .sum();
    start..start + len
}

/// Byte offset of a 1-based line and column (in chars), clamped to the text.
fn offset_of(text: &str, line: u64, column: u64) -> usize {
    let lines = usize::try_from(line.saturating_sub(1)).unwrap_or(usize::MAX);
    let start: usize = text.split_inclusive('\n').take(lines).map(str::len).sum();
    let cols = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
    let col: usize = text[start..]
        .chars()
        .take_while(|&c| c != '\n')
        .take(cols)
        .map(char::len_utf8)
        .sum();
    start + col
}

/// Diagnostics as one JSON array on standard output, in the shape of the gate's
/// `--format json` (`rule`, `kind`, `name` and `field` are null for schema mistakes).
pub fn print_json(diags: &[&Diagnostic]) {
    let items: Vec<serde_json::Value> = diags
        .iter()
        .map(|d| {
            serde_json::json!({
                "rule": d.rule,
                "severity": severity(d.severity),
                "message": d.message,
                "file": d.span.file.display().to_string(),
                "line": d.span.line,
                "column": d.span.column,
                "kind": null,
                "name": null,
                "field": null,
            })
        })
        .collect();
    println!("{}", serde_json::Value::Array(items));
}

/// The gate's findings: JSON with their subject, or as diagnostics.
pub fn print_changes(changes: &[Change], format: crate::Format) {
    if format == crate::Format::Json {
        println!(
            "{}",
            serde_json::to_string(changes).unwrap_or_else(|e| format!("[] // {e}"))
        );
        return;
    }
    for c in changes {
        print(&c.to_diagnostic(), format == crate::Format::Human);
    }
}

/// The closing count on standard error (not with JSON, whose output is the array alone).
pub fn count(diags: &[Diagnostic], format: crate::Format) {
    if format == crate::Format::Json {
        return;
    }
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    eprintln!("{errors} error{} found", if errors == 1 { "" } else { "s" });
}

/// Left-aligned columns two spaces apart under a header, no borders, no trailing spaces:
/// the lines of a table for a terminal or a pipe alike.
pub fn table<const N: usize>(header: &[&str; N], rows: Vec<[String; N]>) -> Vec<String> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(header.to_vec());
    table.add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_past_the_end_of_a_shorter_file_falls_back_to_line_and_column() {
        let text = "a: 1\nbé: 2\n";
        assert_eq!(label_range(text, Some(500), 2, 1), 5..8);
        assert_eq!(label_range(text, Some(500), 40, 9), text.len()..text.len());
    }

    #[test]
    fn an_offset_inside_a_character_is_not_sliced() {
        let text = "é: 1\n";
        // Byte 1 is inside `é` (two bytes): the line and column are used instead.
        assert_eq!(label_range(text, Some(1), 1, 1), 0..2);
        let text = "x: ééé\n";
        assert_eq!(label_range(text, Some(4), 1, 5), 5..9);
        for offset in 0..=text.len() + 2 {
            let r = label_range(text, Some(offset), 1, 2);
            assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
        }
    }

    #[test]
    fn a_column_past_the_end_of_its_line_stays_on_that_line() {
        assert_eq!(offset_of("ab\ncd\n", 1, 99), 2);
        assert_eq!(offset_of("ab", 9, 9), 2);
    }
}
