//! qmul-models
