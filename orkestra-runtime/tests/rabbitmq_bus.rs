//! The RabbitMQ bus against the local broker: the same conformance suite as the
//! in-process bus, then what only a broker adds (competing consumers across processes,
//! delayed retries, dead letters with their headers, malformed messages, secrets).

mod support;

use orkestra_runtime::Bus;

bus_suite!(support::services::rabbit_bus());
