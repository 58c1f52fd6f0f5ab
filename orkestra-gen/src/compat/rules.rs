//! The rule ids of the compatibility gate: stable names, each with the sentence the
//! guide documents (`book/src/evolution.md`, "The compatibility gate").

use std::fmt;
use std::str::FromStr;

use crate::diagnostic::Severity;

macro_rules! rules {
    ($($variant:ident = $id:literal, $severity:ident, $breaks:literal;)*) => {
        /// An incompatible change the gate reports. The ids are stable: scripts and
        /// `--allow` name them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Rule {
            $(
                #[doc = $breaks]
                $variant,
            )*
        }

        impl Rule {
            /// Every rule, in the documented order.
            pub const ALL: &'static [Rule] = &[$(Rule::$variant),*];

            /// The stable id (`EVENT_FIELD_TYPE_CHANGED`).
            pub fn id(self) -> &'static str {
                match self {
                    $(Rule::$variant => $id,)*
                }
            }

            /// Error, or warning for a change that loses nothing by itself.
            pub fn severity(self) -> Severity {
                match self {
                    $(Rule::$variant => Severity::$severity,)*
                }
            }

            /// When it breaks, in one sentence.
            pub fn breaks_when(self) -> &'static str {
                match self {
                    $(Rule::$variant => $breaks,)*
                }
            }
        }
    };
}

rules! {
    EventRemoved = "EVENT_REMOVED", Error,
        "An event type disappears: stored events can no longer be read.";
    EventVersionDecreased = "EVENT_VERSION_DECREASED", Error,
        "An event's `version` goes down.";
    EventUpcastMissing = "EVENT_UPCAST_MISSING", Error,
        "An event's `version` goes up without a step from the old version.";
    EventFieldRequiredAdded = "EVENT_FIELD_REQUIRED_ADDED", Error,
        "A new required field with no default and no `added` step: old events lack it.";
    EventRequiredFieldRemoved = "EVENT_REQUIRED_FIELD_REMOVED", Error,
        "A required field disappears (or is renamed): the previous release cannot read new events.";
    EventFieldTypeChanged = "EVENT_FIELD_TYPE_CHANGED", Error,
        "A field keeps its name but changes type (even with a custom step, old readers break).";
    EventFieldMadeRequired = "EVENT_FIELD_MADE_REQUIRED", Error,
        "An optional field becomes required.";
    EventEnumValueRemoved = "EVENT_ENUM_VALUE_REMOVED", Error,
        "A value of an enum used in an event disappears: old events carry it.";
    EventEnumValueAdded = "EVENT_ENUM_VALUE_ADDED", Error,
        "A value is added to an enum used in an event: the previous release cannot read it.";
    EventTopicChanged = "EVENT_TOPIC_CHANGED", Error,
        "An event's topic changes (override or namespace): bindings and queues lose it.";
    CommandRemoved = "COMMAND_REMOVED", Error,
        "A command disappears.";
    CommandTopicChanged = "COMMAND_TOPIC_CHANGED", Error,
        "A command's topic changes.";
    CommandParamRequiredAdded = "COMMAND_PARAM_REQUIRED_ADDED", Error,
        "A new required param without default: old dispatchers do not send it.";
    CommandParamRemoved = "COMMAND_PARAM_REMOVED", Error,
        "A param disappears: old dispatchers still send it (unknown params are rejected).";
    CommandParamTypeChanged = "COMMAND_PARAM_TYPE_CHANGED", Error,
        "A param changes type.";
    CommandParamMadeRequired = "COMMAND_PARAM_MADE_REQUIRED", Error,
        "An optional param becomes required.";
    CommandRuleTightened = "COMMAND_RULE_TIGHTENED", Error,
        "`min` up, `max` down, a length bound tightened, `pattern` or `format` added or changed, a `one_of` or enum value removed.";
    PartitionsChanged = "PARTITIONS_CHANGED", Error,
        "A projection's or process manager's `partitions` changes: its stored checkpoints were assigned to the old count, so the runtime refuses to start it until it is rebuilt (a projection with `checkpoint: none` keeps none and may change freely).";
    TagRemoved = "TAG_REMOVED", Error,
        "A tag disappears from an event's `tags`: events appended from then on are not indexed by it, so a decision reading by that tag (in either release) no longer sees them and its rule breaks.";
    TagAdded = "TAG_ADDED", Warning,
        "A tag is added to an event's `tags`: events stored before have no index entries for it until `orkestra store reindex-tags` builds them, and decisions reading by it refuse to run until then.";
    PersonalAdded = "PERSONAL_ADDED", Warning,
        "A field of an event becomes personal (`personal: true`, directly or in a named type it uses): events stored before hold it in plain text, which forgetting the subject cannot erase, until `orkestra store encrypt-personal` seals them in place.";
    PersonalRemoved = "PERSONAL_REMOVED", Error,
        "A field of an event stops being personal: events appended from then on hold it in plain text, which forgetting the subject cannot erase.";
    PersonalSubjectChanged = "PERSONAL_SUBJECT_CHANGED", Error,
        "An event's `personal_data.subject` names another field: its stored sealed values are bound to the old subject's key and no longer open.";
    HandlerRemoved = "HANDLER_REMOVED", Warning,
        "A handler binding disappears: on RabbitMQ its queue keeps messages nobody reads.";
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// An id that names no rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule `{given}`; the rules are: {}", Rule::ALL.iter().map(|r| r.id()).collect::<Vec<_>>().join(", "))]
pub struct UnknownRule {
    given: String,
}

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rule::ALL
            .iter()
            .copied()
            .find(|r| r.id().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownRule {
                given: s.to_owned(),
            })
    }
}
