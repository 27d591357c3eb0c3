//! The `websocket` fuzz target's seeds, regressions included, run on every `make test`
//! (the fuzzer itself needs nightly; see docs/testing.md).

#[test]
fn websocket_fuzz_seeds_pass_the_oracle() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/websocket");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.expect("entry").path();
        pushcenter_websocket::fuzz_reader(&std::fs::read(&path).expect("seed"));
        n += 1;
    }
    assert!(n >= 2, "seeds found in {dir:?}: {n}");
}
