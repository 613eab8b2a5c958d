//! qmul-tools: the host side of qmul. The `qmul` command (train, eval, inspect),
//! the data-set layer, forget specifications, training and evaluation loops.

pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod forget;
pub mod forgetting;
pub mod progress;
pub mod report;
pub mod torch;
pub mod train;
