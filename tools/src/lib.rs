//! qmul-tools
pub mod data;
