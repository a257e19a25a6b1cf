//! One file per subcommand.
pub mod konnectivity;
