//! A 1 GiB initial memory, set at link time (a static that large would take
//! the compiler minutes to evaluate).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=--initial-memory=1073741824");
    }
}
