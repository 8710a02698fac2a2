//! The `penaltybox` binary's library: the command line's subcommands and
//! the wiring of the library crates into a running server. Everything
//! here puts pieces together (settings into configurations, the kernel
//! maps into the ban core's kernel table, the fleet link into the
//! registry); the decisions live in the library crates. `main.rs` only
//! parses the command line and hands each subcommand to its module; the
//! benches use these modules as they are.

pub mod bans_cmd;
pub mod capabilities;
pub mod client_cmd;
pub mod config_print;
pub mod db_cmd;
pub mod display;
pub mod feeds_wiring;
pub mod fleet_wiring;
pub mod kernel_table;
pub mod kernel_wiring;
pub mod keygen;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod replay_cmd;
pub mod serve;
pub mod settings;
pub mod tier_status;
pub mod top_cmd;
pub mod top_view;
pub mod xdp_cmd;
