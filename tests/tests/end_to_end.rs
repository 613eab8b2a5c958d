//! Cross-crate: a ResNet-18 built by qmul-models trains on the runtime keeping
//! only 4-bit checkpoints for the backward pass.

use qmul_models::{resnet, ResNetConfig};
use qmul_runtime::{InitOptions, Model, QuantScheme, Targets};

#[test]
fn saved_activations_are_4bit_codes() {
    let g = resnet(&ResNetConfig::resnet18(
        16,
        28,
        28,
        1,
        10,
        QuantScheme::Pact,
    ))
    .unwrap();
    let mut m = Model::new(g, InitOptions::default()).unwrap();
    let n = 2;
    let images = vec![100u8; n * 784];
    let labels = vec![1u32; n];
    let w = vec![1.0f32; n];
    let p = m
        .train_pass(
            &images,
            n,
            Targets {
                labels: &labels,
                weights: &w,
            },
            true,
        )
        .unwrap();
    // 784 input bytes + 108,544 four-bit codes per image (see ARCHITECTURE.md).
    assert_eq!(p.saved_bytes, n * (784 + 108_544 / 2));
}
