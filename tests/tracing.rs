//! Traces over OTLP: a `wasmgrid dev` with `--otlp-endpoint` sends its
//! spans to a collector this test runs (OTLP/HTTP, protobuf, decoded with
//! the OpenTelemetry protocol's own types). A call that carries a W3C
//! `traceparent` continues the caller's trace through the gateway into the
//! guest call; a batch job's submit and every attempt of its tasks share
//! the trace the job reports.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::grid::Dev;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use wasmgrid_test_artifacts as guests;

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP trace collector on a free port, keeping every span.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                    let mut spans = kept.lock().expect("spans");
                    for resource in request.resource_spans {
                        let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
                        let service =
                            attributes.iter().find(|a| a.key == "service.name").map(|a| text(a.value.as_ref()));
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                spans.push(Received {
                                    service: service.clone().unwrap_or_default(),
                                    name: span.name,
                                    trace_id: hex::encode(&span.trace_id),
                                    span_id: hex::encode(&span.span_id),
                                    parent_span_id: hex::encode(&span.parent_span_id),
                                    attributes: span
                                        .attributes
                                        .iter()
                                        .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                        .collect(),
                                });
                            }
                        }
                    }
                    (
                        [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, spans }
    }

    /// Waits until `pick` holds for the spans received, and returns them.
    async fn wait_for(&self, what: &str, pick: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans.lock().expect("spans").clone();
            if pick(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "{what}: not received within 20 s; got {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn call(gateway: &str, traceparent: Option<&str>) -> reqwest::Response {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut request = http.post(format!("{gateway}/v1/fn/default/score")).bearer_auth(common::TOKEN);
        if let Some(parent) = traceparent {
            request = request.header("traceparent", parent);
        }
        let answer = request.json(&serde_json::json!({"rows": [{"x": 2.0}]})).send().await.expect("call");
        if answer.status().is_success() || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const MODEL: &str = r#"model={"features":["x"],"weights":[0.5],"bias":0}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_jobs_are_traced_end_to_end() {
    let collector = Collector::start().await;
    if let Ok(mut env) = common::EXTRA_ENV.lock() {
        env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start_with(&dir.path().join("grid"), &["--otlp-endpoint", &collector.url]);
    common::grid_ok(&dev.control_plane, &["deploy", "score", guests::LOGREG, "--config", MODEL]);

    // A call in the caller's trace: the gateway's span is the caller's
    // span's child, the guest call the gateway span's.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let answer = call(&dev.gateway, Some(&format!("00-{trace}-{parent}-01"))).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(answer.headers()["wasmgrid-trace-id"], trace, "the answer names the trace");
    // (Calls before the node had the function answered 404 in the same
    // trace: the one that was served is the one with a guest call.)
    let served = |r: &Received| {
        r.trace_id == trace
            && r.name == "invoke"
            && r.attributes.get("http.response.status_code").is_some_and(|s| s == "200")
    };
    let spans = collector
        .wait_for("the call's spans", |s| {
            s.iter().any(served) && s.iter().any(|r| r.trace_id == trace && r.name == "guest call")
        })
        .await;
    let invoke = spans.iter().find(|r| served(r)).expect("invoke");
    assert_eq!(invoke.parent_span_id, parent, "the gateway's span continues the caller's");
    assert_eq!(invoke.service, "wasmgrid-dev");
    assert_eq!(invoke.attributes["function"], "score");
    assert_eq!(invoke.attributes["tenant"], "default");
    assert_eq!(invoke.attributes["version"], "1");
    assert_eq!(invoke.attributes["http.response.status_code"], "200");
    let guest = spans.iter().find(|r| r.trace_id == trace && r.name == "guest call").expect("guest call");
    assert_eq!(guest.parent_span_id, invoke.span_id, "the guest call is inside the gateway's span");
    assert_eq!(guest.attributes["rows"], "1");

    // Without a traceparent the call starts a trace of its own.
    let answer = call(&dev.gateway, None).await;
    let own = answer.headers()["wasmgrid-trace-id"].to_str().expect("trace id").to_string();
    assert_ne!(own, trace);
    collector
        .wait_for("the new trace", |s| {
            s.iter().any(|r| r.trace_id == own && r.name == "invoke" && r.parent_span_id.is_empty())
        })
        .await;

    // A batch job: its submit and every attempt, on whichever node, in the
    // trace the job reports.
    let corpus = dir.path().join("corpus");
    common::write_corpus(&corpus, 4, 2000, 3);
    common::grid_ok(&dev.control_plane, &["deploy", "wc-map", guests::WORDCOUNT_MAP]);
    common::grid_ok(&dev.control_plane, &["deploy", "wc-reduce", guests::WORDCOUNT_REDUCE]);
    let out = dir.path().join("counts");
    let (corpus, out) = (corpus.display().to_string(), out.display().to_string());
    let submit = ["job", "submit", "wc-map", "--input", &corpus, "--output", &out, "--reduce", "wc-reduce"];
    let id = common::grid_ok(
        &dev.control_plane,
        &[&submit[..], &["--reduce-partitions", "2", "--partition-size", "1KiB"]].concat(),
    );
    let id = id.trim();
    common::grid_ok(&dev.control_plane, &["job", "wait", id]);
    let job: serde_json::Value =
        serde_json::from_str(&common::grid_ok(&dev.control_plane, &["job", "status", id, "--json"])).expect("job json");
    let job_trace = job["trace_id"].as_str().expect("trace_id").to_string();
    let tasks = job["map_tasks"].as_u64().expect("map tasks") + job["reduce_tasks"].as_u64().expect("reduce tasks");
    let spans = collector
        .wait_for("the job's spans", |s| {
            s.iter().filter(|r| r.trace_id == job_trace && r.name == "task attempt").count() as u64 >= tasks
                && s.iter().any(|r| r.trace_id == job_trace && r.name == "job submit")
        })
        .await;
    let attempts: Vec<&Received> =
        spans.iter().filter(|r| r.trace_id == job_trace && r.name == "task attempt").collect();
    assert!(attempts.iter().all(|a| a.attributes["job"] == id && a.attributes["outcome"] == "done"), "{attempts:#?}");
    for stage in ["map", "reduce"] {
        assert!(attempts.iter().any(|a| a.attributes["stage"] == stage), "a {stage} attempt");
    }
    let submit = spans.iter().find(|r| r.trace_id == job_trace && r.name == "job submit").expect("job submit");
    assert_eq!(submit.attributes["job"], id);
    assert_eq!(submit.parent_span_id, attempts[0].parent_span_id, "submit and attempts hang off the job's root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_calls_carry_no_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(&dir.path().join("grid"));
    common::grid_ok(&dev.control_plane, &["deploy", "score", guests::LOGREG, "--config", MODEL]);
    let answer = call(&dev.gateway, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).await;
    assert!(answer.status().is_success());
    assert!(answer.headers().get("wasmgrid-trace-id").is_none(), "no trace without an exporter");
}
