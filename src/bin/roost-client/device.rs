//! This device as `--state` keeps it: its identity and MLS state, the local names of its groups,
//! and how a command authenticates as it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use roost::client::groups::GroupClient;
use roost::client::mls::DeviceMls;
use roost::client::state::DeviceIdentity;
use roost::client::transparency::KeyTransparency;
use roost::client::{Connection, PushStream};
use roost::clock::{Clock, SystemClock};
use roost::protocol::{ClientId, Text};

/// Local names of groups (`STATE_DIR/groups.json`), for people who prefer `team` to a hex id.
pub struct GroupNames(std::collections::BTreeMap<String, String>);

impl GroupNames {
    pub const FILE: &'static str = "groups.json";

    pub fn load(state: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(state.join(Self::FILE)) {
            Ok(text) => Ok(Self(
                serde_json::from_str(&text).context("reading groups.json")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self(Default::default())),
            Err(e) => Err(e).context("reading groups.json"),
        }
    }

    pub fn insert(mut self, name: &str, group: &str, state: &Path) -> anyhow::Result<()> {
        self.0.insert(name.to_owned(), group.to_owned());
        std::fs::write(
            state.join(Self::FILE),
            serde_json::to_string_pretty(&self.0)?,
        )
        .context("writing groups.json")
    }

    /// A group id from a local name or a hex id.
    pub fn resolve(&self, group: &str) -> anyhow::Result<Vec<u8>> {
        let id = self.0.get(group).map_or(group, String::as_str);
        hex::decode(id).map_err(|_| {
            anyhow::anyhow!(
                "{group:?} is neither a group name on this device nor a group id (the hex id `create-group` and `groups` print)"
            )
        })
    }

    pub fn name_of(&self, id: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, group)| group.as_str() == id)
            .map(|(name, _)| name.as_str())
    }
}

/// The signature keys of this user's other devices that this device added or accepted
/// (`STATE_DIR/known-devices.json`, hex): `check-devices` reports any other.
pub struct KnownDevices(std::collections::BTreeSet<String>);

impl KnownDevices {
    pub const FILE: &'static str = "known-devices.json";

    pub fn load(state: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(state.join(Self::FILE)) {
            Ok(text) => Ok(Self(
                serde_json::from_str(&text).context("reading known-devices.json")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self(Default::default())),
            Err(e) => Err(e).context("reading known-devices.json"),
        }
    }

    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.0
            .iter()
            .filter_map(|key| hex::decode(key).ok())
            .collect()
    }

    /// Adds `keys` and saves.
    pub fn add(mut self, keys: &[&[u8]], state: &Path) -> anyhow::Result<()> {
        self.0.extend(keys.iter().map(hex::encode));
        std::fs::write(
            state.join(Self::FILE),
            serde_json::to_string_pretty(&self.0)?,
        )
        .context("writing known-devices.json")
    }
}

/// The file where a device keeps the newest transparency tree head it saw of each domain.
pub const TREE_HEADS_FILE: &str = "tree-heads";

/// This device: its identity, its MLS side, and the state directory they live in.
pub struct Device {
    pub identity: DeviceIdentity,
    pub mls: DeviceMls,
    pub state: PathBuf,
}

impl Device {
    pub fn load(state: &Path) -> anyhow::Result<Self> {
        let identity = DeviceIdentity::load(state)?;
        let mls = DeviceMls::load(&identity, state)?;
        Ok(Self {
            identity,
            mls,
            state: state.to_owned(),
        })
    }

    /// A freshly registered device (its identity already saved).
    pub fn new(identity: DeviceIdentity, state: &Path) -> anyhow::Result<Self> {
        let mls = DeviceMls::new(&identity)?;
        Ok(Self {
            identity,
            mls,
            state: state.to_owned(),
        })
    }

    /// Saves the MLS key store (group states, KeyPackage private keys).
    pub fn save(&self) -> anyhow::Result<()> {
        self.mls.save(&self.state)
    }

    /// Publishes KeyPackages if the stock is low, keeping their private keys. Returns how many.
    pub async fn top_up(&self, connection: &Connection) -> anyhow::Result<usize> {
        let published = connection
            .top_up_key_packages(&self.identity.client, &self.mls)
            .await?;
        if published > 0 {
            self.save()?;
        }
        Ok(published)
    }

    /// The group flows of this device on `connection`.
    pub async fn groups<'a>(
        &'a self,
        connection: &'a Connection,
    ) -> anyhow::Result<GroupClient<'a>> {
        Ok(GroupClient::new(
            connection,
            &self.mls,
            connection.domain_keys().await?,
            now(),
        )
        .with_transparency(self.transparency()?))
    }

    /// What this device knows of the transparency logs it checked (the heads it saw).
    pub fn transparency(&self) -> anyhow::Result<std::sync::Arc<KeyTransparency>> {
        Ok(std::sync::Arc::new(KeyTransparency::in_file(
            self.state.join(TREE_HEADS_FILE),
        )?))
    }
}

/// Loads the device in `state`, authenticates the connection as it, and (as any device coming
/// online does) tops up its KeyPackages if they run low.
pub async fn authenticate(
    connection: &Connection,
    state: &Path,
) -> anyhow::Result<(Device, PushStream)> {
    let device = Device::load(state)?;
    let push = connection
        .authenticate(&device.identity.client, &device.identity.signing_key)
        .await
        .with_context(|| format!("authenticating as {}", device.identity.client))?;
    device.top_up(connection).await?;
    Ok((device, push))
}

pub fn now() -> u64 {
    SystemClock.now()
}

/// `7` (a device of `me`'s user) or `alice@a.example/7`.
pub fn parse_client(text: &str, me: &ClientId) -> anyhow::Result<ClientId> {
    let (user, device) = match text.rsplit_once('/') {
        Some((user, device)) => (Text::new(user)?, device),
        None => (me.user_id.clone(), text),
    };
    let device_id = device
        .parse()
        .with_context(|| format!("{text:?} is not a device id or USER/DEVICE"))?;
    Ok(ClientId {
        user_id: user,
        device_id,
    })
}

/// The domain of a user id.
pub fn user_domain(user: &str) -> anyhow::Result<&str> {
    match roost::identity::UserId::domain_of(user) {
        "" => anyhow::bail!("{user:?} is not USER@DOMAIN"),
        domain => Ok(domain),
    }
}
