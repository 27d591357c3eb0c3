//! The fuzz targets' seeds, regressions included, run on every `make test`
//! (the fuzzer itself needs nightly; see docs/testing.md).

#[test]
fn session_fuzz_seeds_pass_the_oracle() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/session");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/session") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("seed");
        pushcenter_node::bench_support::fuzz_session(&data);
        n += 1;
    }
    assert!(n >= 2, "seeds found: {n}");
}

#[test]
fn websocket_fuzz_seeds_pass_the_oracle() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/websocket");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/websocket") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("seed");
        pushcenter_node::bench_support::fuzz_websocket(&data);
        n += 1;
    }
    assert!(n >= 2, "seeds found: {n}");
}
