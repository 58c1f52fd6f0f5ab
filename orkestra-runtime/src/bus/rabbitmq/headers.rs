//! Every AMQP field-table key the bus reads or writes (message headers, `x-death`
//! entries, queue arguments), and the helpers that read and write them, including the
//! W3C trace-context injector and extractor.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::trace;

/// The retry limit a message carries (from `CommandEnvelope::max_retries`).
pub(super) const MAX_RETRIES: &str = "x-max-retries";
/// The broker's record of a message's dead-letterings: an array of tables.
pub(super) const X_DEATH: &str = "x-death";
/// The exchange a message was first published to, set by the broker on dead-lettering.
pub(super) const X_FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
/// Keys of one `x-death` entry, and the reason a consumer's reject gives.
pub(super) const DEATH_QUEUE: &str = "queue";
pub(super) const DEATH_REASON: &str = "reason";
pub(super) const DEATH_COUNT: &str = "count";
pub(super) const REJECTED: &str = "rejected";

/// What a dead letter says about where it came from and why.
pub(super) const ORIGINAL_EXCHANGE: &str = "x-orkestra-original-exchange";
pub(super) const ORIGINAL_ROUTING_KEY: &str = "x-orkestra-original-routing-key";
pub(super) const HANDLER: &str = "x-orkestra-handler";
pub(super) const ATTEMPTS: &str = "x-orkestra-attempts";
pub(super) const ERROR: &str = "x-orkestra-error";

/// What a replay (`DeadLetterAdmin::replay`) adds: the dead-letter queue it came from,
/// and the original trace context, which the consumer links to (the replay starts a
/// new trace).
pub(super) const REPLAYED_FROM: &str = "x-orkestra-replayed-from";
pub(super) const REPLAY_OF_TRACEPARENT: &str = "x-orkestra-replay-of-traceparent";
pub(super) const REPLAY_OF_TRACESTATE: &str = "x-orkestra-replay-of-tracestate";

/// W3C trace context.
pub(super) const TRACEPARENT: &str = trace::TRACEPARENT;
pub(super) const TRACESTATE: &str = trace::TRACESTATE;

/// Queue arguments: where a queue dead-letters to, its TTL and its expiry.
pub(super) const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
pub(super) const DEAD_LETTER_ROUTING_KEY: &str = "x-dead-letter-routing-key";
pub(super) const MESSAGE_TTL: &str = "x-message-ttl";
pub(super) const EXPIRES: &str = "x-expires";
/// An exchange's alternate exchange (where what it cannot route goes).
pub(super) const ALTERNATE_EXCHANGE: &str = "alternate-exchange";
/// Queue arguments of quorum queues.
pub(super) const QUEUE_TYPE: &str = "x-queue-type";
pub(super) const DEAD_LETTER_STRATEGY: &str = "x-dead-letter-strategy";
pub(super) const OVERFLOW: &str = "x-overflow";
pub(super) const DELIVERY_LIMIT: &str = "x-delivery-limit";

/// A string value (long or short string); anything else is absent.
pub(super) fn string(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// An integer value of any AMQP integer type.
pub(super) fn int(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    as_int(headers?.inner().get(key)?)
}

/// A non-negative integer that fits a `u32`.
pub(super) fn uint(headers: Option<&FieldTable>, key: &str) -> Option<u32> {
    int(headers, key).and_then(|i| u32::try_from(i).ok())
}

fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => i64::from(*i),
        AMQPValue::ShortShortUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        AMQPValue::Timestamp(i) => i64::try_from(*i).ok()?,
        _ => return None,
    })
}

/// The headers every dead letter carries: where it was first published, which handler
/// gave up, after how many runs and why.
pub(super) fn dead_letter(
    exchange: &str,
    routing_key: &str,
    handler: &str,
    attempts: u32,
    reason: &str,
) -> FieldTable {
    let mut table = FieldTable::default();
    put_str(&mut table, ORIGINAL_EXCHANGE, exchange);
    put_str(&mut table, ORIGINAL_ROUTING_KEY, routing_key);
    put_str(&mut table, HANDLER, handler);
    put_int(&mut table, ATTEMPTS, i64::from(attempts));
    put_text(&mut table, ERROR, reason);
    table
}

/// Sets `key` to a long string.
pub(super) fn put_str(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(key.into(), AMQPValue::LongString(value.into()));
}

/// The most bytes a header built from free text (a failure reason) keeps. Headers
/// travel in one frame: a header frame over the connection's `frame_max` (128 KiB by
/// default) makes the broker close the whole connection.
pub(super) const MAX_TEXT_BYTES: usize = 4096;

/// Sets `key` to free text, cut to [`MAX_TEXT_BYTES`] ([`cut`]).
pub(super) fn put_text(headers: &mut FieldTable, key: &str, value: &str) {
    put_str(headers, key, &cut(value, MAX_TEXT_BYTES));
}

/// `text` if it fits in `limit` bytes; else its start, cut on a character boundary,
/// followed by a mark that says it was cut and how long it was, all within `limit`.
pub(super) fn cut(text: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= limit {
        return std::borrow::Cow::Borrowed(text);
    }
    let mark = format!("… [cut: {} bytes in all]", text.len());
    let mut end = limit.saturating_sub(mark.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{mark}", &text[..end]))
}

/// Sets `key` to a 64-bit integer.
pub(super) fn put_int(headers: &mut FieldTable, key: &str, value: i64) {
    headers.insert(key.into(), AMQPValue::LongLongInt(value));
}

/// How many times this message was rejected from `queue` (the `x-death` entry with
/// reason `rejected` for that queue). Malformed headers count as none.
pub(super) fn rejections(headers: Option<&FieldTable>, queue: &str) -> u32 {
    let Some(AMQPValue::FieldArray(deaths)) = headers.and_then(|h| h.inner().get(X_DEATH)) else {
        return 0;
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .filter(|t| {
            string(Some(t), DEATH_QUEUE).as_deref() == Some(queue)
                && string(Some(t), DEATH_REASON).as_deref() == Some(REJECTED)
        })
        .filter_map(|t| t.inner().get(DEATH_COUNT).and_then(as_int))
        .map(|c| u32::try_from(c).unwrap_or(u32::MAX))
        .max()
        .unwrap_or(0)
}

/// Writes trace-context headers into a field table (as long strings).
pub(super) struct TraceInjector<'a>(pub(super) &'a mut FieldTable);

impl opentelemetry::propagation::Injector for TraceInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

/// Reads trace-context headers from a field table (long or short strings).
pub(super) struct TraceExtractor<'a>(pub(super) &'a FieldTable);

impl opentelemetry::propagation::Extractor for TraceExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_cut_on_a_char_boundary_and_marked() {
        assert_eq!(cut("short", 64), "short");
        let long = "é".repeat(10_000);
        let cut = cut(&long, MAX_TEXT_BYTES);
        assert!(cut.len() <= MAX_TEXT_BYTES, "{}", cut.len());
        assert!(cut.ends_with("… [cut: 20000 bytes in all]"), "{cut}");
        assert!(cut.starts_with("éé"));
    }
}
