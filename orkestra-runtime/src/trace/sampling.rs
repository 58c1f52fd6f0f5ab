//! Which flows get spans: the ratio, and the decision for one message.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::Message;

/// Share of new flows (a dispatch or publish with no sampled trace around it) that get
/// spans, as `f64` bits. 1.0 by default: every flow, and the OpenTelemetry sampler decides.
static SAMPLING_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000); // 1.0f64

/// Sets the share of new flows the buses trace, from 0.0 (none) to 1.0 (all, the default).
///
/// Inside a sampled trace the buses always trace; inside an unsampled OpenTelemetry trace
/// they never do. For a new flow, this ratio decides, by a hash of the correlation id, so
/// every message of one flow is traced or none is (across services too, since the
/// correlation id travels). An unsampled flow creates no spans at all, which keeps a
/// sampled-off OpenTelemetry pipeline almost free (see BENCHMARKS.md); its handler logs
/// still carry the message ids (through the `orkestra.log_context` span, which never
/// reaches OpenTelemetry). `telemetry::init` sets this from its configuration;
/// set it yourself when you install an OpenTelemetry layer with a ratio sampler.
pub fn set_sampling_ratio(ratio: f64) {
    let ratio = if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    SAMPLING_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
}

/// The share of new flows the buses trace.
pub fn sampling_ratio() -> f64 {
    f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed))
}

/// Whether the bus should create spans for `message`: inside a valid OpenTelemetry
/// context its sampled flag decides; for a new flow, [`samples`] at the configured ratio.
pub(crate) fn should_trace(message: &Message) -> bool {
    let current = Span::current();
    if !current.is_disabled() {
        let cx = current.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return sc.is_sampled();
        }
    }
    let ratio = sampling_ratio();
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    samples(&message.metadata().correlation_id, ratio)
}

/// Whether a new flow with this correlation id is traced at `ratio`: the documented,
/// stable decision every Orkestra process makes, so a flow is traced in every service
/// or in none.
///
/// `h` is the 64-bit FNV-1a hash of the correlation id's UTF-8 bytes (offset basis
/// `0xcbf29ce484222325`, prime `0x100000001b3`); the flow is traced when
/// `h < ratio × 2^64` (so a ratio of 1.0 traces every flow, 0.0 none, and NaN counts as
/// 1.0). It depends on nothing but the two arguments: not on the process, the build or
/// the toolchain, unlike `std`'s `DefaultHasher`, whose algorithm may change.
pub fn samples(correlation_id: &str, ratio: f64) -> bool {
    if ratio.is_nan() || ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    // 2^64 as f64 is exact; the product is below it, so the cast cannot saturate.
    let threshold = (ratio * 18_446_744_073_709_551_616.0) as u64;
    fnv1a64(correlation_id.as_bytes()) < threshold
}

/// 64-bit FNV-1a.
const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn known_ids_get_known_decisions() {
        // Pinned: changing these decisions splits traces across services of different
        // versions. Each id's hash as a fraction of 2^64 is in the comment.
        let cases = [
            ("3f2b8c1e-9d4a-4b7e-8f00-5a6c7d8e9f01", 0.5, false), // 0.5926
            ("3f2b8c1e-9d4a-4b7e-8f00-5a6c7d8e9f01", 0.6, true),
            ("00000000-0000-0000-0000-000000000000", 0.5, true), // 0.4852
            ("00000000-0000-0000-0000-000000000000", 0.48, false),
            ("order-42", 0.49, true), // 0.4887
            ("order-42", 0.488, false),
            ("c0ffee00-0000-4000-8000-000000000001", 0.25, true), // 0.2224
            ("c0ffee00-0000-4000-8000-000000000001", 0.2, false),
        ];
        for (id, ratio, traced) in cases {
            assert_eq!(samples(id, ratio), traced, "{id} at {ratio}");
        }
        assert!(samples("anything", 1.0));
        assert!(!samples("anything", 0.0));
        assert!(samples("anything", f64::NAN));
    }
}
