//! Admission: a call waits for one of its function's slots (within the
//! function's queue bound), then for one of the node's, shared fairly
//! between tenants ([`FairSlots`](crate::fair::FairSlots)), both within the
//! queue timeout; a tenant with a quota also holds one of its shares. The
//! body is read under a size limit and a time limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::OwnedSemaphorePermit;
use wasmgrid_api::{Answer, Failure};

use crate::fair::FairPermit;
use crate::{Gateway, Served};

impl Gateway {
    /// One of `tenant`'s calls-at-once on this node, if it has a quota:
    /// `429` when all are in use.
    pub(crate) fn tenant_share(&self, tenant: &str) -> Answer<Option<OwnedSemaphorePermit>> {
        let share = self.shares.lock().ok().and_then(|s| s.get(tenant).cloned());
        let Some((quota, permits)) = share else {
            return Ok(None);
        };
        permits.try_acquire_owned().map(Some).map_err(|_| {
            let message =
                format!("tenant `{tenant}` is at its quota of {quota} calls at once on this node; retry later");
            Failure::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
        })
    }
}

/// Counts a call in flight until dropped.
pub(crate) struct InFlight {
    gateway: Arc<Gateway>,
    gauge: Gauge,
}

impl InFlight {
    pub(crate) fn new(gateway: &Arc<Gateway>, served: &Served) -> Self {
        gateway.inflight.fetch_add(1, Ordering::Relaxed);
        served.series.inflight.inc();
        InFlight { gateway: gateway.clone(), gauge: served.series.inflight.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gateway.inflight.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// A place in a function's queue, held until dropped.
struct Place<'a> {
    waiting: &'a AtomicUsize,
    /// Calls that were waiting when this one took its place.
    ahead: usize,
}

impl<'a> Place<'a> {
    fn take(waiting: &'a AtomicUsize) -> Place<'a> {
        Place { waiting, ahead: waiting.fetch_add(1, Ordering::AcqRel) }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a running call holds: one of the function's slots and one of the
/// node's, given back when dropped.
pub(crate) struct Admitted {
    _function: OwnedSemaphorePermit,
    _node: FairPermit,
}

/// Waits for one of the function's slots, within its queue bound, then for
/// one of the node's, in the fair order between tenants, both within the
/// queue timeout; answers 429 or 503 (with `Retry-After`) otherwise.
pub(crate) async fn admit(gateway: &Gateway, served: &Served, name: &str) -> Answer<Admitted> {
    let started = Instant::now();
    let function = admit_function(gateway, served, name).await?;
    let left = gateway.config.queue_timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, gateway.slots.acquire(served.tenant.clone())).await {
        Ok(node) => Ok(Admitted { _function: function, _node: node }),
        Err(_) => {
            let message = format!(
                "this node is running its limit of {} calls at once and had no free slot within {:?}; retry later",
                gateway.slots.capacity(),
                gateway.config.queue_timeout
            );
            Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message))
        }
    }
}

async fn admit_function(gateway: &Gateway, served: &Served, name: &str) -> Answer<OwnedSemaphorePermit> {
    if let Ok(p) = served.gate.slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    let gate = &served.gate;
    // The place is given back however the wait ends, also when the caller
    // hangs up and the call is dropped mid-wait.
    let place = Place::take(&gate.waiting);
    if place.ahead >= gateway.config.max_queue {
        let message = format!(
            "function `{name}` is at its concurrency limit ({} running, {} waiting); retry later",
            gateway.config.max_concurrency, gateway.config.max_queue
        );
        return Err(Failure::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message));
    }
    let waited = tokio::time::timeout(gateway.config.queue_timeout, gate.slots.clone().acquire_owned()).await;
    drop(place);
    match waited {
        Ok(Ok(p)) => Ok(p),
        _ => {
            let message =
                format!("function `{name}` had no free slot within {:?}; retry later", gateway.config.queue_timeout);
            Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message))
        }
    }
}

/// Reads a request's body, up to the gateway's limit: a declared length
/// over it is refused before a byte is read, and a body that stops
/// arriving fails with `408`.
pub(crate) async fn read_body(gateway: &Gateway, headers: &HeaderMap, body: axum::body::Body) -> Answer<Bytes> {
    let limit = gateway.config.max_body;
    let too_large = || {
        let message = format!("the body is over the limit of {limit} bytes");
        Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(body) => Ok(body),
        Err(e) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                if c.is::<tower_http::timeout::TimeoutError>() {
                    let message = "the body stopped arriving before it was complete";
                    return Err(Failure::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message));
                }
                cause = c.source();
            }
            Err(Failure::bad(format!("the body could not be read: {e}")))
        }
    }
}
