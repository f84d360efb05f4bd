//! placeholder: see verify task
