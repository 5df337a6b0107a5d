//! Integration tests: real servers on ephemeral loopback ports with real redb files in temp
//! directories (or, with `ROOST_TEST_STORE=postgres`, a fresh PostgreSQL database each), driven
//! through the real client library (and, in `cli`, the real binaries).

mod accounts;
mod attacks;
mod auth;
mod cli;
mod conversations;
mod crash;
mod federation;
mod floods;
mod group_logs;
mod groups;
mod hostile;
mod key_packages;
mod limits;
mod nodes;
mod offline_push;
mod operators;
mod push;
mod queues;
mod races;
mod readme;
mod shutdown;
mod support;
mod transparency;
mod transport;
mod trust;
mod versions;
