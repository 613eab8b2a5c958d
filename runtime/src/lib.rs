//! qmul-runtime
