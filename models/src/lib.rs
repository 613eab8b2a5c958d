//! qmul-models: architectures built as runtime graphs. The runtime never needs
//! these to run a model (the model file carries its graph); they exist to create
//! new models to train.

pub mod resnet;

pub use resnet::{resnet, ResNetConfig};
