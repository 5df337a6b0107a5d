//! Integration tests: real servers on ephemeral loopback ports with real redb files in temp
//! directories, driven through the real client library (and, in `cli`, the real binaries).

mod accounts;
mod auth;
mod cli;
mod crash;
mod federation;
mod floods;
mod group_logs;
mod groups;
mod hostile;
mod key_packages;
mod limits;
mod offline_push;
mod operators;
mod push;
mod queues;
mod readme;
mod shutdown;
mod support;
mod transport;
mod trust;
