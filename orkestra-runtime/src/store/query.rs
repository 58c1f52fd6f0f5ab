//! Dynamic consistency boundaries (dcb.events): [`Tag`]s on events, a [`Query`] over
//! event types and tags, and the [`AppendCondition`] of [`Store::append_if`].
//!
//! A query is a list of [`QueryItem`]s combined with OR. An item matches an event whose
//! type is one of the item's types (any type when it names none) and which carries every
//! one of the item's tags. A decision reads the events matching its query
//! ([`Store::read_query`]), decides, and appends on the condition that no event matching
//! that query was appended after the last position it read.
//!
//! [`Store::append_if`]: super::Store::append_if
//! [`Store::read_query`]: super::Store::read_query

use std::fmt;

use super::StoreError;

/// A tag on an event: a key and a value, written `key:value` (the key holds no `:`;
/// neither part is empty). The store indexes events by their tags at append time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    /// `key:value`.
    text: String,
    /// Where the `:` is.
    split: usize,
}

impl Tag {
    /// The tag `key:value`; an empty key or value, or a key holding `:`, is refused.
    pub fn new(key: impl AsRef<str>, value: impl AsRef<str>) -> Result<Self, StoreError> {
        let (key, value) = (key.as_ref(), value.as_ref());
        if key.is_empty() {
            return Err(StoreError::Invalid(format!(
                "tag with value {value:?}: the key is empty"
            )));
        }
        if key.contains(':') {
            return Err(StoreError::Invalid(format!(
                "tag key {key:?} holds a ':' (the text form is key:value)"
            )));
        }
        if value.is_empty() {
            return Err(StoreError::Invalid(format!(
                "tag {key:?}: the value is empty"
            )));
        }
        Ok(Self {
            text: format!("{key}:{value}"),
            split: key.len(),
        })
    }

    /// Parses the text form `key:value` (split at the first `:`).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text.split_once(':') {
            Some((key, value)) => Self::new(key, value),
            None => Err(StoreError::Invalid(format!(
                "tag {text:?} is not of the form key:value"
            ))),
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.text[..self.split]
    }

    /// The value.
    pub fn value(&self) -> &str {
        &self.text[self.split + 1..]
    }

    /// The text form, `key:value` (what the store indexes).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One item of a [`Query`]: event types (none: any type) and tags (an event must carry
/// all of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryItem {
    types: Vec<String>,
    tags: Vec<Tag>,
}

impl QueryItem {
    /// Events of one of `types` (an empty list: of any type).
    pub fn types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        Self::default().with_types(types)
    }

    /// Events carrying every one of `tags`, of any type.
    pub fn tags(tags: impl IntoIterator<Item = Tag>) -> Self {
        Self::default().with_tags(tags)
    }

    /// Adds event types to the item.
    #[must_use]
    pub fn with_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        for t in types {
            let t = t.into();
            if !self.types.contains(&t) {
                self.types.push(t);
            }
        }
        self
    }

    /// Adds tags the events must carry.
    #[must_use]
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = Tag>) -> Self {
        for t in tags {
            if !self.tags.contains(&t) {
                self.tags.push(t);
            }
        }
        self
    }

    /// The event types (empty: any).
    pub fn event_types(&self) -> &[String] {
        &self.types
    }

    /// The tags an event must all carry.
    pub fn required_tags(&self) -> &[Tag] {
        &self.tags
    }

    /// Whether an event of `event_type` carrying `tags` matches this item.
    pub fn matches(&self, event_type: &str, tags: &[Tag]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.tags.iter().all(|t| tags.contains(t))
    }

    /// Neither types nor tags: it matches every event.
    fn matches_all(&self) -> bool {
        self.types.is_empty() && self.tags.is_empty()
    }
}

/// Items combined with OR: an event matches the query when it matches any item. A query
/// without items matches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    items: Vec<QueryItem>,
}

impl Query {
    /// A query of one item.
    pub fn of(item: QueryItem) -> Self {
        Self { items: vec![item] }
    }

    /// Adds an item (OR).
    #[must_use]
    pub fn or(mut self, item: QueryItem) -> Self {
        self.items.push(item);
        self
    }

    /// The items.
    pub fn items(&self) -> &[QueryItem] {
        &self.items
    }

    /// Whether it has no item (and so matches nothing).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether an event of `event_type` carrying `tags` matches.
    pub fn matches(&self, event_type: &str, tags: &[Tag]) -> bool {
        self.items.iter().any(|i| i.matches(event_type, tags))
    }

    /// Refuses what a condition cannot be: no item (it could never fail, and a store
    /// would have to lock everything to be sure), or an item matching every event.
    pub(crate) fn check_condition(&self, stream: &str) -> Result<(), StoreError> {
        if self.items.is_empty() {
            return Err(StoreError::Invalid(format!(
                "append_if to stream {stream:?}: the condition's query has no items; \
                 it would have to lock every event (use append for an unconditional append)"
            )));
        }
        if let Some(i) = self.items.iter().position(QueryItem::matches_all) {
            return Err(StoreError::Invalid(format!(
                "append_if to stream {stream:?}: item {i} of the condition's query names \
                 neither types nor tags; it would lock every event"
            )));
        }
        Ok(())
    }
}

/// The condition of [`Store::append_if`](super::Store::append_if): the append fails with
/// [`StoreError::WrongCondition`] if an event matching `fail_if_events_match` is stored
/// after position `after` (`None`: at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendCondition {
    /// The decision's consistency boundary.
    pub fail_if_events_match: Query,
    /// The last position the decision read (events at or before it were seen).
    pub after: Option<u64>,
}

/// The first stored event that fails a condition.
#[derive(Clone, Debug)]
pub(crate) struct Conflict {
    pub(crate) position: u64,
    pub(crate) event_type: String,
}

impl Conflict {
    pub(crate) fn into_error(self, stream: &str, after: Option<u64>) -> StoreError {
        StoreError::WrongCondition {
            stream: stream.to_owned(),
            after,
            position: self.position,
            event_type: self.event_type,
        }
    }
}

/// A SQL query for the positions of events matching `query` at or after a position, for
/// SQLite and PostgreSQL: one branch per item, joined by UNION, each led by an index
/// (the tag index for an item with tags, the type otherwise). `placeholder(n)` writes
/// parameter `n` (1-based); parameter 1 is the first position, the others are texts,
/// returned in order.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn matching_positions(
    query: &Query,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<String>) {
    let mut texts: Vec<String> = Vec::new();
    let next = |texts: &mut Vec<String>, value: &str| {
        texts.push(value.to_owned());
        placeholder(texts.len() + 1)
    };
    let from = placeholder(1);
    let mut branches = Vec::with_capacity(query.items.len());
    for item in &query.items {
        let types = if item.types.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = item.types.iter().map(|t| next(&mut texts, t)).collect();
            format!(" AND e.event_type IN ({})", list.join(", "))
        };
        match item.tags.split_first() {
            Some((first, rest)) => {
                let first = next(&mut texts, first.as_str());
                let mut branch = format!(
                    "SELECT t.position FROM orkestra_event_tags t \
                     JOIN orkestra_events e ON e.position = t.position \
                     WHERE t.tag = {first} AND t.position >= {from}{types}"
                );
                for tag in rest {
                    let p = next(&mut texts, tag.as_str());
                    branch.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM orkestra_event_tags u \
                         WHERE u.tag = {p} AND u.position = t.position)"
                    ));
                }
                branches.push(branch);
            }
            None => branches.push(format!(
                "SELECT e.position FROM orkestra_events e WHERE e.position >= {from}{types}"
            )),
        }
    }
    (branches.join(" UNION "), texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(text: &str) -> Tag {
        Tag::parse(text).unwrap()
    }

    #[test]
    fn a_tag_has_a_text_form_and_refuses_empty_parts() {
        let t = Tag::new("course", "c1:a").unwrap();
        assert_eq!(t.as_str(), "course:c1:a");
        assert_eq!((t.key(), t.value()), ("course", "c1:a"));
        assert_eq!(Tag::parse("course:c1:a").unwrap(), t);
        for bad in ["", ":x", "course:", "nocolon"] {
            let e = Tag::parse(bad).unwrap_err().to_string();
            assert!(e.contains("tag"), "{bad:?}: {e}");
        }
        assert!(Tag::new("a:b", "c").is_err());
    }

    #[test]
    fn items_match_by_type_and_all_tags_and_queries_or_them() {
        let both = QueryItem::types(["A"]).with_tags([tag("c:1"), tag("s:1")]);
        assert!(both.matches("A", &[tag("s:1"), tag("c:1"), tag("x:9")]));
        assert!(!both.matches("A", &[tag("c:1")]));
        assert!(!both.matches("B", &[tag("c:1"), tag("s:1")]));
        let query = Query::of(both).or(QueryItem::types(["B"]));
        assert!(query.matches("B", &[]));
        assert!(!query.matches("C", &[tag("c:1"), tag("s:1")]));
        assert!(!Query::default().matches("A", &[]));
    }

    #[test]
    fn a_condition_needs_items_that_name_something() {
        let e = Query::default()
            .check_condition("s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no items"), "{e}");
        let e = Query::of(QueryItem::types(["A"]))
            .or(QueryItem::default())
            .check_condition("s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("item 1"), "{e}");
    }
}
