//! `reset`: forgets the identity in `--state`, locally (the server is not asked), with what the
//! device knew of transparency logs.

use std::path::Path;

use anyhow::{bail, Context};
use roost::client::state::DeviceIdentity;
use serde_json::json;

use crate::device::{GroupNames, KnownDevices, TREE_HEADS_FILE};
use crate::output::Output;

/// `reset`: forgets the identity, keys and groups kept in `state`.
pub fn run(state: &Path) -> anyhow::Result<Output> {
    let identity = DeviceIdentity::load(state).ok();
    let mut removed = Vec::new();
    for file in [
        roost::client::state::IDENTITY_FILE,
        roost::client::mls::MLS_STORAGE_FILE,
        GroupNames::FILE,
        // What this device knew of transparency logs and of its user's devices: a new device in
        // this directory starts without them (a new server of the same domain is a new log).
        TREE_HEADS_FILE,
        KnownDevices::FILE,
    ] {
        let path = state.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    if removed.is_empty() {
        bail!("{} holds no identity to forget", state.display());
    }
    // The directory goes too if nothing else is in it.
    let _ = std::fs::remove_dir(state);
    let client = identity.map(|identity| identity.client.to_string());
    let text = match &client {
        Some(client) => format!(
            "forgot {client} in {}; the server still lists this device until it is removed (remove-client from another device of the user)",
            state.display()
        ),
        None => format!("forgot the identity in {}", state.display()),
    };
    Ok(Output::new(
        json!({ "reset": state.display().to_string(), "client_id": client }),
        text,
    ))
}
