//! `include/qmul.h` is generated from the C ABI by cbindgen and checked in;
//! this test fails when it is stale. Regenerate it with
//! `QMUL_BLESS=1 cargo test -p qmul-tests --test header`.

#[test]
fn checked_in_header_matches_the_c_abi() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/capi");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the C ABI")
        .write(&mut generated);
    let path = format!("{dir}/../../include/qmul.h");
    if std::env::var_os("QMUL_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/qmul.h is stale: run QMUL_BLESS=1 cargo test -p qmul-tests --test header"
    );
}
