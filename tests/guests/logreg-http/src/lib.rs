//! `logreg` as a standard `wasi:http/proxy` component: the same model code
//! (`guest-examples/logreg/src/model.rs`), JSON rows in and out like the
//! wasmgrid gateway, the model from environment variable `MODEL`. This is
//! what `wasmtime serve` runs in the gateway benchmark.

use std::io::{Read as _, Write as _};

use serde_json::{Map, Value};
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

#[path = "../../../../guest-examples/logreg/src/model.rs"]
mod model;

wasip2::http::proxy::export!(LogRegHttp);

struct LogRegHttp;

fn score(body: &[u8]) -> Result<Vec<u8>, String> {
    let model = model::Model::parse(&std::env::var("MODEL").map_err(|_| "MODEL is not set".to_string())?)?;
    let mut request: Map<String, Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(Value::Array(rows)) = request.remove("rows") else {
        return Err("expected {\"rows\": [...]}".into());
    };
    let mut rows: Vec<Map<String, Value>> = rows
        .into_iter()
        .map(|r| if let Value::Object(o) = r { Ok(o) } else { Err("a row is not an object".to_string()) })
        .collect::<Result<_, _>>()?;
    let scores = model.score(rows.len(), |name| {
        rows.iter()
            .map(|r| r.get(name).and_then(Value::as_f64).ok_or_else(|| format!("a row has no number `{name}`")))
            .collect::<Result<Vec<f64>, String>>()
    })?;
    for (row, s) in rows.iter_mut().zip(scores) {
        row.insert("score".into(), Value::from(s));
    }
    serde_json::to_vec(&serde_json::json!({ "rows": rows })).map_err(|e| e.to_string())
}

impl wasip2::exports::http::incoming_handler::Guest for LogRegHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let mut received = Vec::new();
        if let Ok(body) = request.consume()
            && let Ok(mut stream) = body.stream()
        {
            let _ = stream.read_to_end(&mut received);
        }
        let (status, bytes) = match score(&received) {
            Ok(bytes) => (200, bytes),
            Err(e) => (400, e.into_bytes()),
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut out) = body.write() {
            for chunk in bytes.chunks(4096) {
                let _ = out.write_all(chunk);
            }
            let _ = out.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
