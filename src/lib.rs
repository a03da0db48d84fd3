//! `cnspr` as a library: the daemon (`daemon::serve`), the control-socket protocol
//! (`api`), its client (`client`), the replicated store (`store`) and the handler engine
//! (`handlers`). The `cnspr` binary (`main.rs`) only parses arguments, sets up logging and
//! dispatches to this crate; tests and benchmarks use it the same way.

pub mod addr;
pub mod api;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod fdpass;
pub mod handlers;
pub mod output;
pub mod paths;
pub mod pipe;
pub mod relay;
pub mod store;
pub mod ui;
