//! A plain `wasi:http/proxy` component with no wasmgrid in it. It answers
//! `METHOD PATH: N bytes` for the request it got; `/spin` loops forever and
//! `/panic` panics, for the gateway's error paths.

use std::io::{Read as _, Write as _};

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Other(m) => m,
            other => format!("{other:?}").to_uppercase(),
        };
        if path == "/spin" {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if path == "/panic" {
            panic!("the handler was asked to panic");
        }
        let mut received = Vec::new();
        if let Ok(body) = request.consume()
            && let Ok(mut stream) = body.stream()
        {
            let _ = stream.read_to_end(&mut received);
        }

        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut out) = body.write() {
            let _ = write!(out, "{method} {path}: {} bytes", received.len());
            let _ = out.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
