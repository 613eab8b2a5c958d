//! The model-file loader on arbitrary bytes: an error or a model, never a
//! panic, an abort or an allocation the bytes do not justify. A model that
//! loads must run one image and serialize again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmul_runtime::model_file;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = model_file::from_bytes(data) {
        let s = m.graph.input_shape();
        if s.len() <= 1 << 16 {
            let _ = m.forward(&vec![0u8; s.len()], 1);
        }
        let _ = model_file::to_bytes(&m);
    }
});
