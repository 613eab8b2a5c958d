//! The idx (images, labels), CIFAR-10/100 and gzip readers on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmul_runtime::data::{cifar, file, idx, CifarKind};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz");
    let _ = idx::parse_idx_images(data, p);
    let _ = idx::parse_idx_labels(data, p);
    let (mut im, mut lb) = (Vec::new(), Vec::new());
    let _ = cifar::parse_cifar(data, CifarKind::Cifar10, p, &mut im, &mut lb);
    let _ = cifar::parse_cifar(data, CifarKind::Cifar100, p, &mut im, &mut lb);
    if file::is_gzip(data) {
        let _ = file::gunzip(data, p);
    }
});
