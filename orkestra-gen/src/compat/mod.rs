//! The compatibility gate (the guide's [schema evolution](https://github.com/orkestra-rs/orkestra/blob/main/book/src/evolution.md) chapter): compares a schema set with an older
//! one and reports every change that breaks a release deployed beside the other, under a
//! stable rule id. Events are checked both ways (the new release reads every stored
//! version; the previous release reads what the new one writes), commands one way (the
//! new handler accepts what old dispatchers send).

mod compare;
mod load;
mod rules;

use serde::Serialize;

pub use load::Against;
pub use rules::{Rule, UnknownRule};

use crate::diagnostic::{Diagnostic, Severity, Span};
use crate::model::Model;

/// One incompatible change.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The rule it breaks.
    pub rule: Rule,
    /// Where: the new file for a change, the old file for a removal.
    pub span: Span,
    /// What changed and why it breaks, in a sentence.
    pub message: String,
    /// The command, event, handler, projection or process manager it is about.
    pub subject: Subject,
    /// How to make the change safely, when there is a known way.
    pub help: Option<String>,
}

/// What a change is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// `event`, `command`, `handler`, `projection` or `process_manager`.
    pub kind: &'static str,
    /// Its full name (`Shop.Orders.OrderPlaced`).
    pub name: String,
    /// The field or param, with a dotted path inside named types.
    pub field: Option<String>,
}

impl Subject {
    fn new(kind: &'static str, name: &str, field: Option<&str>) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            field: field.map(str::to_owned),
        }
    }
}

impl Change {
    /// Error or warning (`HANDLER_REMOVED`, `TAG_ADDED` and `PERSONAL_ADDED` warn).
    pub fn severity(&self) -> Severity {
        self.rule.severity()
    }

    /// As a located diagnostic: `file:line:col: error[RULE]: ...`.
    pub fn to_diagnostic(&self) -> Diagnostic {
        let d = match self.severity() {
            Severity::Error => Diagnostic::error(&self.span, self.message.clone()),
            Severity::Warning => Diagnostic::warning(&self.span, self.message.clone()),
        };
        let d = d.with_rule(self.rule.id());
        match &self.help {
            Some(help) => d.with_help(help.clone()),
            None => d,
        }
    }
}

/// The JSON form `--format json` prints: `{rule, severity, message, file, line, column,
/// kind, name, field}`, and `help` when the change has a known safe path.
impl Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Change", 9)?;
        st.serialize_field("rule", self.rule.id())?;
        st.serialize_field(
            "severity",
            match self.severity() {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
        )?;
        st.serialize_field("message", &self.message)?;
        st.serialize_field("file", &self.span.file.display().to_string())?;
        st.serialize_field("line", &self.span.line)?;
        st.serialize_field("column", &self.span.column)?;
        st.serialize_field("kind", self.subject.kind)?;
        st.serialize_field("name", &self.subject.name)?;
        st.serialize_field("field", &self.subject.field)?;
        match &self.help {
            Some(help) => st.serialize_field("help", help)?,
            None => st.skip_field("help")?,
        }
        st.end()
    }
}

/// Every incompatible change from `old` to `new`, except those of the `allowed` rules,
/// sorted by location.
pub fn compare(old: &Model, new: &Model, allowed: &[Rule]) -> Vec<Change> {
    let mut c = compare::Comparer::new(old, new);
    c.run();
    c.changes.retain(|ch| !allowed.contains(&ch.rule));
    c.changes
}
