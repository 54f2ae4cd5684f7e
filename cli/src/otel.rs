//! Traces over OTLP: with `--otlp-endpoint URL` (or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), the spans of target
//! `wasmgrid::trace` (the gateway's calls, the guest calls, batch attempts,
//! job submits) go to `URL/v1/traces` as OTLP/HTTP protobuf, in batches from
//! a background thread. `OTEL_SERVICE_NAME` names the service (default:
//! `wasmgrid-` and the role); `OTEL_BSP_*` tune the batches.

use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;

/// The OTLP exporter's HTTP client: blocking reqwest on the batch
/// processor's own thread (no async runtime there).
#[derive(Debug)]
struct Http(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Http {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut builder = self.0.request(parts.method, parts.uri.to_string()).body(body.to_vec());
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send()?;
        let status = response.status();
        let body = response.bytes()?;
        Ok(http::Response::builder().status(status).body(body)?)
    }
}

/// The exporter's provider, shut down (flushing what is queued) on drop.
pub struct Traces(SdkTracerProvider);

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// The tracing layer that exports to `endpoint` as `service`.
pub fn layer<S>(endpoint: &str, service: &str) -> Result<(impl tracing_subscriber::Layer<S>, Traces)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("the OTLP exporter's HTTP client")?;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Http(client))
        .with_endpoint(url)
        .build()
        .context("the OTLP exporter")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("wasmgrid");
    let filter =
        tracing_subscriber::filter::Targets::new().with_target(wasmgrid_api::trace::TARGET, tracing::Level::TRACE);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter);
    Ok((layer, Traces(provider)))
}
