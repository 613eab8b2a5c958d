//! qmul-tools
