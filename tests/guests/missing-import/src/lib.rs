//! A component that imports `test:hostile/vault`, which no wasmgrid host
//! provides: loading it must fail with an error naming the import.

// wit-bindgen's generated export glue is `unsafe` FFI.
#![allow(unsafe_code)]

wit_bindgen::generate!({ path: "wit", world: "missing-import" });

struct Component;

impl Guest for Component {
    fn score(rows: u32) -> Result<u32, String> {
        Ok(rows + test::hostile::vault::get_secret("token").len() as u32)
    }
}

export!(Component);
