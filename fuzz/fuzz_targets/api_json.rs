//! Every JSON body the control plane and the gateway decode from callers,
//! and the `Authorization` header: the first byte picks which, the rest is
//! the body. Decoding either succeeds or fails with a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use wasmgrid_api::*;

fn decode<T: DeserializeOwned + serde::Serialize>(body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        // What decodes must encode again.
        serde_json::to_vec(&value).expect("a decoded body encodes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 13 {
        0 => decode::<DeployRequest>(body),
        1 => decode::<JobRequest>(body),
        2 => decode::<TokenRequest>(body),
        3 => decode::<TenantRequest>(body),
        4 => decode::<RollbackRequest>(body),
        5 => decode::<Heartbeat>(body),
        6 => decode::<LeaseRequest>(body),
        7 => decode::<ReportRequest>(body),
        8 => decode::<InvokeRequest>(body),
        9 => {
            let _ = wasmgrid_gateway::decode_body(body, false);
        }
        10 => {
            let _ = wasmgrid_gateway::decode_body(body, true);
        }
        11 => {
            if let Ok(token) = bearer_token(Some(body)) {
                assert!(!token.is_empty() && !token.contains(' '));
            }
        }
        _ => {
            if let Ok(name) = std::str::from_utf8(body)
                && check_name(name).is_ok()
            {
                assert!(!name.contains('/') && !name.contains("..") && name.len() <= 63);
            }
        }
    }
});
