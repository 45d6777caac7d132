//! The checked-in CRD files are exactly what the Rust types generate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn checked_in_crds_match_the_rust_types() {
    let generated = shop_controller::crd::crd_yaml().unwrap();
    let root = shop_testkit::bed::repo_dir();
    for file in [
        "deploy/crds/shoppipelines.shopstream.dev.yaml",
        "charts/shopstream/crds/shoppipelines.shopstream.dev.yaml",
    ] {
        let checked_in = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            checked_in == generated,
            "{file} is out of date: run `make generate` and commit it"
        );
    }
}
