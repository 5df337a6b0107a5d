//! The store's ground floor: one file per family of tables. Each owns its tables (their
//! definitions, keys and encodings) and the primitives that read and write them inside a
//! transaction; none calls another. Work that spans families is a floor up, in the store's
//! transaction files ([`super`]).

pub mod accounts;
pub mod federation;
pub mod group_logs;
pub mod group_trees;
pub mod groups;
pub mod key_packages;
pub mod leases;
pub mod meta;
pub mod push;
pub mod queues;
pub mod transparency;
