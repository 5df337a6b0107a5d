//! Roost: a homeserver for end-to-end encrypted messaging built on MLS (RFC 9420), over QUIC.
//!
//! The crate is one library and two thin binaries (`src/bin/roost.rs`, the server and operator
//! commands; `src/bin/roost-client.rs`, the command-line client). Data flows one way through the
//! library's layers, and back as a response:
//!
//! - [`protocol`]: the wire types, their encoding, error codes and limits. Pure: no I/O.
//! - [`transport`]: the QUIC endpoint, TLS, connections and streams, channel-bound
//!   authentication and the push stream. Knows nothing of accounts or groups; the only layer that
//!   turns errors into wire error codes.
//! - [`services`]: what the server does for an authenticated request; each service owns its rules.
//! - [`store`]: the one redb database and its single group-commit writer; the only module that
//!   names redb.
//! - [`client`]: the client library used by `roost-client`, the tests and the benchmarks.
//!
//! [`server`] wires the layers together; [`tls`] holds certificates and rustls configurations for
//! both sides; [`config`] is the validated server configuration; [`identity`] holds user ids and
//! client credentials (issued by the server, verified by clients); [`clock`] is the time services
//! see, settable in tests; [`rate_limit`] the keyed rate limiters both the transport (per source,
//! per client) and the services (per claimer, per target) use.
//!
//! `ARCHITECTURE.md` at the repository root is the map; `protocol-spec/` is the wire contract.

pub mod admin;
pub mod client;
pub mod clock;
pub mod config;
pub mod escape;
pub mod identity;
pub mod metrics;
pub mod protocol;
pub mod rate_limit;
pub mod secret_files;
pub mod server;
pub mod services;
pub mod store;
pub mod tls;
pub mod transport;
pub mod web_push;
