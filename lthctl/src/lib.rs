//! lthctl, the command-line client of an lth coordinator, as a library.
//!
//! The binary (`src/main.rs`) only parses arguments and prints errors; everything it does lives
//! here so that it can be tested in-process: reading and checking sweep files (`sweep_file`),
//! mapping specs and names to the wire (`convert`), talking to the coordinator (`client`),
//! aggregating results over seeds and rendering them (`results`), the report's SVG plots
//! (`plot`), the live progress view (`watch`) and the subcommands themselves (`commands`).

pub mod cli;
pub mod client;
pub mod commands;
pub mod convert;
pub mod plot;
pub mod results;
pub mod sweep_file;
pub mod watch;
