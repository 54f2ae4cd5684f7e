//! Follows docs/guide/kafka.md: a tansu broker, `wasmgrid dev` allowed to
//! reach it, topics made with tansu, windows produced and scores read with
//! kcat, and every output compared with the guide's.

mod common;

#[test]
fn kafka_guide_works_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(broker) = common::kafka::Broker::start(&dir.path().join("tansu.log")) else { return };
    let kcat = std::process::Command::new("kcat").arg("-V").output();
    if !kcat.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("WASMGRID_REQUIRE_KAFKA").is_none(),
            "WASMGRID_REQUIRE_KAFKA is set but kcat is missing"
        );
        eprintln!("skipped: no kcat");
        return;
    }
    let env = [("BROKER", broker.address.as_str()), ("WASMGRID_EGRESS_ALLOW", "127.0.0.1")];
    common::follow_guide("kafka.md", &env, 6);
}
