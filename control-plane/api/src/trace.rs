//! Trace context: which spans become OpenTelemetry spans, the W3C
//! `traceparent` a caller sends, and the trace every attempt of a batch job
//! belongs to.
//!
//! Spans meant for traces use the target [`TARGET`] at `TRACE` level: the
//! log output never shows them, and with no exporter configured they are
//! disabled at their call site (no cost on the per-request path).

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of spans exported as traces.
pub const TARGET: &str = "wasmgrid::trace";

/// The response header that tells a caller the trace of its call.
pub const TRACE_ID_HEADER: &str = "wasmgrid-trace-id";

/// The trace and parent span of every span of batch job `id` of `tenant`:
/// derived from the job, so the control plane and every node that runs an
/// attempt put their spans in one trace without passing it around.
pub fn job_trace(tenant: &str, id: &str) -> ([u8; 16], [u8; 8]) {
    let digest = Sha256::new()
        .chain_update(b"wasmgrid-job\0")
        .chain_update(tenant)
        .chain_update(b"\0")
        .chain_update(id)
        .finalize();
    let mut trace = [0; 16];
    let mut span = [0; 8];
    trace.copy_from_slice(&digest[..16]);
    span.copy_from_slice(&digest[16..24]);
    (trace, span)
}

/// [`job_trace`]'s trace id in hex, as trace viewers show it.
pub fn job_trace_id(tenant: &str, id: &str) -> String {
    TraceId::from_bytes(job_trace(tenant, id).0).to_string()
}

/// Makes `span` part of job `id`'s trace.
pub fn join_job(span: &tracing::Span, tenant: &str, id: &str) {
    if span.is_disabled() {
        return;
    }
    let (trace, parent) = job_trace(tenant, id);
    let context = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(parent),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
}

/// Makes `span` a child of the caller's span when `headers` carry a W3C
/// `traceparent`; returns the trace id `span` is in (hex), if traces are
/// exported.
pub fn continue_from(span: &tracing::Span, headers: &axum::http::HeaderMap) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    if let Some(context) = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(parse_traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
    }
    let id = span.context().span().span_context().trace_id();
    (id != TraceId::INVALID).then(|| id.to_string())
}

/// `00-TRACEID-SPANID-FLAGS` (W3C Trace Context, version 00).
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    Some(SpanContext::new(trace, span, flags, true, TraceState::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_as_w3c_says() {
        let c = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled() && c.is_remote());
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xyz",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_job_has_one_trace_per_tenant() {
        assert_eq!(job_trace("t", "job-1"), job_trace("t", "job-1"));
        assert_ne!(job_trace("t", "job-1").0, job_trace("u", "job-1").0);
        assert_eq!(job_trace_id("t", "job-1").len(), 32);
    }
}
