//! The test harness of the integration tests: the `cnspr-lab` crate (`lab/`), shared with
//! the benchmarks.
#![allow(unused_imports)]

pub use cnspr_lab::*;
