//! The fuzz targets' seeds, regressions included, run on every `make test`
//! (the fuzzer itself needs nightly; see docs/testing.md).

/// Runs every seed in `fuzz/seeds/<target>` through `oracle` (which panics on a broken
/// promise).
fn seeds_pass(target: &str, oracle: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.expect("entry").path();
        oracle(&std::fs::read(&path).expect("seed"));
        n += 1;
    }
    assert!(n >= 2, "seeds found in {dir:?}: {n}");
}

#[test]
fn session_fuzz_seeds_pass_the_oracle() {
    seeds_pass("session", pushcenter_node::testing::fuzz_session);
}
