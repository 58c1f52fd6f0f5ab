//! # orkestra-topic
//!
//! Topic names for [Orkestra](https://github.com/orkestra-rs/orkestra): how they are
//! derived from schema names, and how patterns match them. Matching follows RabbitMQ's
//! topic exchange exactly, so a binding means the same thing on the in-process bus and
//! on the broker.
//!
//! Both the generator (`orkestra-gen`, which checks topic overrides and warns about a
//! wildcard binding that matches no event) and the runtime (`orkestra-runtime`, which
//! routes messages and re-exports this crate as `orkestra_runtime::topic`) use this one
//! implementation: what the generator accepts is what the bus routes. It is a crate of
//! its own so the build-time generator does not compile the runtime (tokio, the store
//! drivers) to get it. Applications use it through `orkestra_runtime::topic`.
//!
//! ```
//! use orkestra_topic::{derive, matches};
//!
//! // `namespace: MyApp.Orders`, command `PlaceOrder`, app prefix `MyApp`:
//! let topic = derive("MyApp.Orders.Commands.PlaceOrder", "MyApp");
//! assert_eq!(topic, "orders.commands.place_order");
//! // `*` is exactly one word, `#` zero or more.
//! assert!(matches("orders.commands.*", &topic));
//! assert!(matches("#.place_order", &topic));
//! assert!(!matches("orders.events.#", &topic));
//! ```
//!
//! This crate has no cargo features.

#![deny(missing_docs)]

use heck::ToSnakeCase;

/// The topic dead letters are published on.
pub const DEAD_LETTER: &str = "orkestra:deadletter";

/// Derives a topic from a fully qualified name.
///
/// The `app_prefix` segments are stripped when the name starts with them, and every
/// remaining segment is snake_cased (acronyms stay together).
///
/// ```
/// use orkestra_topic::derive;
/// assert_eq!(derive("MyApp.Orders.Commands.PlaceOrder", "MyApp"), "orders.commands.place_order");
/// assert_eq!(derive("MyApp.Orders.Events.OrderPlaced", "MyApp"), "orders.events.order_placed");
/// assert_eq!(derive("Ops.Events.HTTPRequestFailed", ""), "ops.events.http_request_failed");
/// ```
pub fn derive(name: &str, app_prefix: &str) -> String {
    let stripped = strip_prefix(name, app_prefix);
    stripped
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_snake_case())
        .collect::<Vec<_>>()
        .join(".")
}

/// `name` without its leading `app_prefix` segments (whole segments only); unchanged
/// when it does not start with them.
pub fn strip_prefix<'a>(name: &'a str, app_prefix: &str) -> &'a str {
    if app_prefix.is_empty() {
        return name;
    }
    match name.strip_prefix(app_prefix) {
        Some("") => "",
        Some(rest) if rest.starts_with('.') => &rest[1..],
        _ => name,
    }
}

/// Whether `topic` matches `pattern` under AMQP topic-exchange rules.
///
/// Both are split into words on `.`; empty words are kept (`a..b` has three words) but the
/// empty string has none. In the pattern a word `*` matches exactly one word (which may
/// be empty) and a word `#` matches zero or more words; `*` or `#` inside a longer word is
/// literal. Matching is case-sensitive. Runs in O(pattern words × topic words).
///
/// ```
/// use orkestra_topic::matches;
/// assert!(matches("orders.events.#", "orders.events.order_placed"));
/// assert!(matches("orders.*.order_placed", "orders.events.order_placed"));
/// assert!(!matches("orders.*", "orders.events.order_placed"));
/// ```
pub fn matches(pattern: &str, topic: &str) -> bool {
    if !pattern.contains(['*', '#']) {
        return pattern == topic;
    }
    let words: Vec<&str> = split_words(topic).collect();
    // reachable[j]: the pattern words read so far match the first j topic words.
    let mut reachable = vec![false; words.len() + 1];
    reachable[0] = true;
    for word in split_words(pattern) {
        match word {
            "#" => {
                // zero or more words: j is reachable if any k <= j was.
                let mut any = false;
                for slot in reachable.iter_mut() {
                    any |= *slot;
                    *slot = any;
                }
            }
            "*" => {
                for j in (1..reachable.len()).rev() {
                    reachable[j] = reachable[j - 1];
                }
                reachable[0] = false;
            }
            literal => {
                for j in (1..reachable.len()).rev() {
                    reachable[j] = reachable[j - 1] && words[j - 1] == literal;
                }
                reachable[0] = false;
            }
        }
        if !reachable.contains(&true) {
            return false;
        }
    }
    reachable[words.len()]
}

/// Whether `pattern` contains a wildcard word (`*` or `#`).
pub fn is_pattern(pattern: &str) -> bool {
    split_words(pattern).any(|w| w == "*" || w == "#")
}

fn split_words(s: &str) -> impl Iterator<Item = &str> {
    // "" has zero words; otherwise every '.' separates two (possibly empty) words.
    (!s.is_empty()).then(|| s.split('.')).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straightforward backtracking definition, exponential but obviously right.
    fn reference(pattern: &[&str], topic: &[&str]) -> bool {
        match pattern.split_first() {
            None => topic.is_empty(),
            Some((&"#", rest)) => (0..=topic.len()).any(|k| reference(rest, &topic[k..])),
            Some((&"*", rest)) => !topic.is_empty() && reference(rest, &topic[1..]),
            Some((word, rest)) => topic.first() == Some(word) && reference(rest, &topic[1..]),
        }
    }

    fn reference_str(pattern: &str, topic: &str) -> bool {
        let p: Vec<&str> = split_words(pattern).collect();
        let t: Vec<&str> = split_words(topic).collect();
        reference(&p, &t)
    }

    #[test]
    fn edge_cases() {
        let table: &[(&str, &str, bool)] = &[
            ("", "", true),
            ("#", "", true),
            ("*", "", false),
            ("", "a", false),
            ("#", "a.b.c", true),
            ("#", ".", true),
            ("*", ".", false),
            ("*.*", ".", true),
            ("a.*.b", "a..b", true),
            ("a.#.b", "a.b", true),
            ("a.#.b", "a.x.y.b", true),
            ("a.#", "a", true),
            ("#.a", "a", true),
            ("a.#", "ab", false),
            ("#.#", "", true),
            ("*.#", "", false),
            ("#.*", "a", true),
            ("a*", "ab", false),
            ("a*", "a*", true),
            ("a#", "a#", true),
            ("a.b#", "a.bc", false),
            ("A.b", "a.b", false),
            ("orders.events.#", "orders.events.order_placed", true),
            ("orders.events.#", "orders.commands.place_order", false),
            ("orders.*", "orders.events.order_placed", false),
            ("*.events.*", "orders.events.order_placed", true),
            ("a.", "a.", true),
            ("a.", "a", false),
            ("a.*", "a.", true),
            (".", "", false),
            ("#.", "", false),
            ("#.", ".", true),
            (DEAD_LETTER, DEAD_LETTER, true),
            ("#", DEAD_LETTER, true),
        ];
        for &(pattern, topic, expected) in table {
            assert_eq!(
                matches(pattern, topic),
                expected,
                "matches({pattern:?}, {topic:?})"
            );
            assert_eq!(
                reference_str(pattern, topic),
                expected,
                "reference({pattern:?}, {topic:?})"
            );
        }
    }

    #[test]
    fn many_hashes_against_a_long_key_is_fast() {
        // RabbitMQ's own trie matcher backtracks exponentially on this shape.
        let pattern = vec!["#"; 15].join(".") + ".z";
        let topic = vec!["a"; 31].join(".");
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert!(!matches(&pattern, &topic));
        }
        // 100 runs; the bound is generous for slow CI machines, the point is "not minutes".
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn derive_examples() {
        assert_eq!(
            derive("MyApp.Orders.Commands.PlaceOrder", "MyApp"),
            "orders.commands.place_order"
        );
        assert_eq!(
            derive("MyApp.Orders.Events.OrderPlaced", "MyApp"),
            "orders.events.order_placed"
        );
        assert_eq!(
            derive("MyApp.Ops.Events.HTTPRequestFailed", "MyApp"),
            "ops.events.http_request_failed"
        );
        assert_eq!(
            derive("Acme.Shop.Billing.Events.InvoicePaid", "Acme.Shop"),
            "billing.events.invoice_paid"
        );
        // A prefix only strips whole segments.
        assert_eq!(
            derive("MyAppX.Orders.Commands.Go", "MyApp"),
            "my_app_x.orders.commands.go"
        );
        assert_eq!(derive("Orders.Commands.Go", "MyApp"), "orders.commands.go");
        assert_eq!(derive("Orders.Commands.Go", ""), "orders.commands.go");
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("a*".to_owned()),
        ]
    }

    fn pattern_word() -> impl Strategy<Value = String> {
        prop_oneof![word(), Just("*".to_owned()), Just("#".to_owned())]
    }

    proptest! {
        #[test]
        fn agrees_with_reference(
            p in proptest::collection::vec(pattern_word(), 0..7),
            t in proptest::collection::vec(word(), 0..7),
        ) {
            let pattern = p.join(".");
            let topic = t.join(".");
            prop_assert_eq!(matches(&pattern, &topic), reference_str(&pattern, &topic));
        }
    }
}
