//! The bottom layer: what every other module may use and which uses no other module of the
//! crate (only the standard library and crates). Errors located in a file ([`located`], with
//! the TOML field locator), the one IP prefix parser ([`prefix`]), IANA protocol names
//! ([`protocol`]), trusted-file checks ([`safefs`]) and the wall clock ([`clock`]).
pub mod clock;
pub mod located;
pub mod prefix;
pub mod protocol;
pub mod safefs;
