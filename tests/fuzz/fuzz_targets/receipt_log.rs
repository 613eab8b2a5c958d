//! The receipt-log verifier on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmul_runtime::session::receipt;

fuzz_target!(|data: &[u8]| {
    let _ = receipt::parse_log(data);
});
